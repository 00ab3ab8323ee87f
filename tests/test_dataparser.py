"""The scene's seed points read without open3d (the lent GPU machine has none) as nerfstudio reads them with it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from pds_nerfstudio.data.dataparser import PDSNerfstudio, PDSNerfstudioDataParserConfig
from pds_nerfstudio.method_configs import pds_splat_method


def _points(scene: Path) -> dict[str, torch.Tensor]:
    parser = PDSNerfstudioDataParserConfig(data=scene, load_3D_points=True).setup()
    assert isinstance(parser, PDSNerfstudio)
    metadata = parser.get_dataparser_outputs(split="train").metadata
    return {key: metadata[key] for key in ("points3D_xyz", "points3D_rgb")}


def test_seed_points_without_open3d_match_nerfstudios_reader(tiny_scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("open3d")
    with_open3d = _points(tiny_scene)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open3d" else find_spec(name, *a))
    without = _points(tiny_scene)
    assert without["points3D_xyz"].shape == with_open3d["points3D_xyz"].shape and len(without["points3D_xyz"]) > 100
    torch.testing.assert_close(without["points3D_xyz"], with_open3d["points3D_xyz"])  # transformed and scaled alike
    difference = (without["points3D_rgb"].int() - with_open3d["points3D_rgb"].int()).abs()
    assert without["points3D_rgb"].dtype == torch.uint8 and int(difference.max()) <= 1  # open3d's 8 bits -> [0, 1] -> 8 bits


def test_splat_edits_read_the_seed_points_with_it() -> None:
    dataparser = pds_splat_method.config.pipeline.datamanager.dataparser
    assert isinstance(dataparser, PDSNerfstudioDataParserConfig) and dataparser.load_3D_points
