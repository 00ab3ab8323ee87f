"""Runs saved before the scene kinds became nested configs, or before the prior left `guidance/`, still load: their
config.yml is read into today's layout.

Until then a run's config.yml named a pipeline config per scene kind (`NerfactoEditPipelineConfig`,
`SplatfactoEditPipelineConfig`) that held the kind's own options beside the pipeline's. nerfstudio reads
config.yml with PyYAML's `yaml.Loader` (nerfstudio 1.1.5 `utils/eval_utils.py:eval_setup`, `scripts/train.py`
for `--load-config`), which resolves a `python/object` tag to the class it names; the constructors registered
here build an `EditPipelineConfig` instead, its scene options moved into `scene`. Checkpoints are unchanged.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Iterator, Optional, Type

import yaml

from pds_nerfstudio.edit.pipeline import EditPipelineConfig
from pds_nerfstudio.prior.stable_diffusion import DiffusionPriorConfig
from pds_nerfstudio.scenes.base import SceneConfig
from pds_nerfstudio.scenes.nerfacto import NerfactoSceneConfig
from pds_nerfstudio.scenes.splatfacto import SplatfactoSceneConfig

LEGACY_PIPELINE_CONFIGS = {
    "pds_nerfstudio.scenes.nerfacto.NerfactoEditPipelineConfig": NerfactoSceneConfig,
    "pds_nerfstudio.scenes.splatfacto.SplatfactoEditPipelineConfig": SplatfactoSceneConfig,
}
"""A saved pipeline config's class -> the scene config its scene options now belong to."""
MOVED_CLASSES = {"pds_nerfstudio.guidance.prior.DiffusionPriorConfig": DiffusionPriorConfig}
"""A saved config's class -> where it lives now (the prior left `guidance/`, which is maths alone)."""


def _reader(cls: type, scene_config: Optional[Type[SceneConfig]] = None):
    """A YAML constructor that builds `cls` from a saved mapping; with `scene_config`, the saved pipeline's scene
    options move into a `scene_config` under `scene`."""
    names = {option.name for option in fields(scene_config) if option.name != "_target"} if scene_config else set()

    def construct(loader: yaml.Loader, node: yaml.MappingNode) -> Iterator[Any]:
        instance = cls.__new__(cls)
        yield instance  # as PyYAML's own python/object constructor does: references to it may be resolved later
        state: dict[str, Any] = loader.construct_mapping(node)
        if scene_config is not None:
            state["scene"] = scene_config(**{name: state.pop(name) for name in names if name in state})
        loader.set_python_instance_state(instance, state)

    return construct


def register() -> None:
    """Reads the old pipeline configs, and configs of classes that moved, as today's (idempotent)."""
    readers = {name: _reader(EditPipelineConfig, scene) for name, scene in LEGACY_PIPELINE_CONFIGS.items()}
    readers.update({name: _reader(cls) for name, cls in MOVED_CLASSES.items()})
    for name, reader in readers.items():
        yaml.add_constructor(f"tag:yaml.org,2002:python/object:{name}", reader, Loader=yaml.Loader)
