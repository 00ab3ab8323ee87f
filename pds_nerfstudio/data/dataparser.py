"""nerfstudio's own dataparser (nerfstudio-data), reading a scene's seed points without open3d where it is missing.

nerfstudio 1.1.5 reads `ply_file_path` (splatfacto's seed points) with open3d, a 400 MB package that machines
without nerfstudio's full install (the lent GPU machine: nerfstudio from a few wheels) do not have. There the points
are read with plyfile (viser's dependency, a few kB), to the same values (a test holds the two readers together).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Type

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig


def read_ply_points(path: Path) -> tuple[Float[np.ndarray, "n 3"], UInt8[np.ndarray, "n 3"]]:
    """The vertices' positions and colours (0-255; grey where the file has none) of a PLY file, with plyfile."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    xyz = np.stack([np.asarray(vertex[axis], dtype=np.float32) for axis in ("x", "y", "z")], -1)
    names = {prop.name for prop in vertex.properties}
    if {"red", "green", "blue"} <= names:
        rgb = np.stack([np.asarray(vertex[c]) for c in ("red", "green", "blue")], -1)
        rgb = (rgb * 255 if rgb.dtype.kind == "f" else rgb).astype(np.uint8)  # open3d keeps 8-bit colours as read
    else:
        rgb = np.full_like(xyz, 128, dtype=np.uint8)
    return xyz, rgb


@dataclass
class PDSNerfstudioDataParserConfig(NerfstudioDataParserConfig):
    """nerfstudio-data, with the seed points read without open3d where it is not installed."""

    _target: Type = field(default_factory=lambda: PDSNerfstudio)


class PDSNerfstudio(Nerfstudio):
    config: PDSNerfstudioDataParserConfig

    def _load_3D_points(
        self, ply_file_path: Path, transform_matrix: Float[Tensor, "3 4"], scale_factor: float
    ) -> Optional[Dict[str, Tensor]]:
        if importlib.util.find_spec("open3d") is not None:
            return super()._load_3D_points(ply_file_path, transform_matrix, scale_factor)
        xyz, rgb = read_ply_points(ply_file_path)
        if len(xyz) == 0:  # as nerfstudio: no initial point cloud
            return None
        # Copied from nerfstudio 1.1.5 nerfstudio/data/dataparsers/nerfstudio_dataparser.py:Nerfstudio._load_3D_points
        points3D = torch.from_numpy(xyz)
        points3D = torch.cat((points3D, torch.ones_like(points3D[..., :1])), -1) @ transform_matrix.T
        points3D *= scale_factor
        return {"points3D_xyz": points3D, "points3D_rgb": torch.from_numpy(rgb)}
