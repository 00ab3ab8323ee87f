"""A third scene kind, as small as one can be: a differentiable colour per ray direction, for driving the edit's
stage logic (stage switches, optimiser resets, stage 2's replacements, resume, the non-finite guard) in
seconds, through the same port (`scenes.base`) and the same `EditPipelineConfig` as nerfacto and splatfacto.

Its "field" is rgb = sigmoid(W d + b) for a ray's unit direction d (12 parameters): every pixel of a view
depends on it, so stage 1's guidance reaches it, and stage 0/2's ray batches train it as any nerfstudio model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import torch
from jaxtyping import Float
from conftest import start_trainer
from torch import Tensor, nn

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.models.base_model import Model, ModelConfig

from pds_nerfstudio import compat
from pds_nerfstudio.data.datamanager import PDSDataManagerConfig
from pds_nerfstudio.edit.pipeline import EditPipelineConfig
from pds_nerfstudio.edit.trainer import PDSTrainer, PDSTrainerConfig
from pds_nerfstudio.prior.stable_diffusion import DiffusionPriorConfig
from pds_nerfstudio.scenes.base import SceneAdapter, SceneConfig, SceneRender, SurfaceRender

compat.allow_nerfstudio_checkpoints()


@dataclass
class DirectionColourModelConfig(ModelConfig):
    _target: Type = field(default_factory=lambda: DirectionColourModel)
    enable_collider: bool = False


class DirectionColourModel(Model):
    """rgb = sigmoid(W d + b): a nerfstudio model with one parameter group, `fields`."""

    def populate_modules(self) -> None:
        super().populate_modules()
        self.colour = nn.Linear(3, 3)

    def get_param_groups(self) -> Dict[str, List[nn.Parameter]]:
        return {"fields": list(self.colour.parameters())}

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        return {"rgb": torch.sigmoid(self.colour(ray_bundle.directions))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        return {"rgb_loss": ((outputs["rgb"] - batch["image"][..., :3].to(self.device)) ** 2).mean()}

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        error = float(((outputs["rgb"] - batch["image"][..., :3].to(self.device)) ** 2).mean())
        return {"mse": error}, {"img": outputs["rgb"]}


class DirectionColourScene(SceneAdapter):
    """The adapter: a whole view is its rays' colours."""

    model: DirectionColourModel

    def _render(self, cameras: Cameras, view: int) -> Float[Tensor, "height width 3"]:
        rays = cameras.generate_rays(camera_indices=view, keep_shape=True)
        return self.model.get_outputs(rays)["rgb"]

    def render_view(self, cameras: Cameras, view: int) -> SceneRender:
        return SceneRender(self._render(cameras, view))

    @torch.no_grad()
    def render_still(self, cameras: Cameras, view: int) -> Float[Tensor, "height width 3"]:
        return self._render(cameras, view)

    @torch.no_grad()
    def render_surface(self, cameras: Cameras, view: int) -> SurfaceRender:
        """Its colour, on a sphere of radius 1 around each camera (it has no geometry)."""
        rgb = self._render(cameras, view)
        return SurfaceRender(rgb, *[torch.ones(rgb.shape[:2])] * 3)

    def ray_depth(self, camera: Cameras, outputs: Dict[str, Tensor]) -> Tensor:
        return torch.ones(outputs["rgb"].shape[:2])

    def starting_scene_problem(self, pipeline_state: Mapping[str, Tensor]) -> Optional[str]:
        return None if "_model.colour.weight" in pipeline_state else "it is not a direction-colour scene"

    @classmethod
    def edit_optimizers(cls) -> Dict[str, Any]:
        """Adam at 1e-2 throughout: nerfstudio's exponential schedule with no warm-up and no decay."""
        schedule = ExponentialDecaySchedulerConfig(lr_final=1e-2, warmup_steps=0, max_steps=1000)
        return {"fields": {"optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15), "scheduler": schedule}}


@dataclass
class DirectionColourSceneConfig(SceneConfig):
    _target: Type = field(default_factory=lambda: DirectionColourScene)


STAGES = dict(reconstruction_iterations=3, pds_iterations=4, refinement_iterations=12)
SDEDIT_EVERY = 3


def stub_trainer(scene: Path, prior: Path, out: Path, timestamp: str = "run",
                 trainer_options: Optional[Dict[str, Any]] = None, **pipeline_options: Any) -> PDSTrainer:  # fmt: skip
    """`ns-train` of the stub scene kind, in-process, at the stage lengths of `STAGES` (options override them);
    a checkpoint every 5 steps and at each stage's end, all kept."""
    options: Dict[str, Any] = dict(source_prompt="a red sphere", target_prompt="a blue sphere",
                                   sdedit_every=SDEDIT_EVERY, log_every=1000, **STAGES)  # fmt: skip
    options.update(pipeline_options)
    pipeline = EditPipelineConfig(
        datamanager=PDSDataManagerConfig(dataparser=NerfstudioDataParserConfig(data=scene),
                                         train_num_rays_per_batch=64),  # fmt: skip
        model=DirectionColourModelConfig(),
        scene=DirectionColourSceneConfig(),
        prior=DiffusionPriorConfig(model_id=str(prior), dtype="fp32", device="cpu"),
        **options,
    )
    config = PDSTrainerConfig(
        method_name="pds-stub", output_dir=out, timestamp=timestamp, vis="tensorboard", mixed_precision=False,
        steps_per_save=5, save_only_latest_checkpoint=False, pipeline=pipeline,
        optimizers={"fields": {"optimizer": AdamOptimizerConfig(lr=5e-2), "scheduler": None}},
        **(trainer_options or {}),
    )  # fmt: skip
    return start_trainer(config, save_config=True)  # checks the options, the run folder, a checkpoint to start from
