"""Splatfacto as an editable scene (`ns-train pds-splat`), on a GPU with gsplat and on a CPU with our reference.

nerfstudio 1.1.5's splatfacto assumes CUDA: it rasterises with gsplat's CUDA kernels and calls `.cuda()` on
the intrinsics in `get_outputs` (and on the SH features of seed points in `populate_modules`). Where CUDA is
absent, :class:`PDSSplatfactoModel` runs those two methods with the plain-torch reference rasteriser
(:mod:`pds_nerfstudio.scenes.rasterizer`) in place of gsplat's and `.cuda()` as a no-op; with CUDA it is stock
splatfacto. Like our nerfacto, it builds LPIPS on first use instead of downloading AlexNet at start-up.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Type

import torch
from jaxtyping import Bool, Float
from torch import Tensor

import nerfstudio.models.splatfacto as splatfacto_module
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig

from pds_nerfstudio.scenes.base import ExtraOutputs, PointValue, SceneAdapter, SceneConfig, SceneRender, SurfaceRender
from pds_nerfstudio.scenes.nerfacto_offline import lpips_deferred
from pds_nerfstudio.scenes.rasterizer import rasterization


@contextlib.contextmanager
def cuda_assumptions_lifted() -> Iterator[None]:
    """Without CUDA: splatfacto's `rasterization` is the reference rasteriser and `Tensor.cuda()` returns the
    tensor itself (nerfstudio 1.1.5 calls it where a device-agnostic `.to` was meant); restored on exit."""
    if torch.cuda.is_available():
        yield
        return
    original_rasterization, original_cuda = splatfacto_module.rasterization, torch.Tensor.cuda
    splatfacto_module.rasterization = rasterization
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        splatfacto_module.rasterization = original_rasterization
        torch.Tensor.cuda = original_cuda  # type: ignore[method-assign]


@dataclass
class PDSSplatfactoModelConfig(SplatfactoModelConfig):
    """Splatfacto, unchanged on a GPU; on a CPU it rasterises with the plain-torch reference."""

    _target: Type = field(default_factory=lambda: PDSSplatfactoModel)


class PDSSplatfactoModel(ExtraOutputs, SplatfactoModel):
    """Splatfacto that starts offline and runs where CUDA is absent (see the module docstring)."""

    config: PDSSplatfactoModelConfig

    def populate_modules(self) -> None:
        with lpips_deferred(), cuda_assumptions_lifted():
            super().populate_modules()

    def get_outputs(self, camera: Cameras):
        with cuda_assumptions_lifted():
            return super().get_outputs(camera)


def splatfacto_optimizers() -> dict:
    """Splatfacto's optimizers and schedules as in nerfstudio 1.1.5's ``method_configs["splatfacto"]``."""
    optimizers = {
        "means": {
            "optimizer": AdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=30000),
        },
        **{
            name: {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}
            for name, lr in (("features_dc", 0.0025), ("features_rest", 0.0025 / 20), ("opacities", 0.05),
                             ("scales", 0.005), ("quats", 0.001))
        },  # fmt: skip
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0),
        },
        "bilateral_grid": {
            "optimizer": AdamOptimizerConfig(lr=2e-3, eps=1e-15),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-4, max_steps=30000, warmup_steps=1000, lr_pre_warmup=0),
        },
    }
    return optimizers


class SplatfactoScene(SceneAdapter):
    """A splatfacto model; stage 1 renders a whole view in one rasterisation (its memory is the image's)."""

    model: SplatfactoModel
    learning_rate_options = (
        "--edit-optimizers.features-dc.optimizer.lr (colour) and --edit-optimizers.means.optimizer.lr"
    )
    memory_options = (
        "--pipeline.render-scale 0.5 (stage 1 renders at half resolution), --pipeline.prior.dtype fp16, "
        "--pipeline.prior.device cuda:1 (the prior on a second GPU)"
    )

    config: SplatfactoSceneConfig

    def __init__(self, config: SplatfactoSceneConfig, model: SplatfactoModel) -> None:
        super().__init__(config, model)
        self._holds: List[torch.utils.hooks.RemovableHandle] = []

    def render_view(self, cameras: Cameras, view: int) -> SceneRender:
        self.model.train()
        return SceneRender(self.model.get_outputs(cameras[view : view + 1])["rgb"])

    @torch.no_grad()
    def render_still(self, cameras: Cameras, view: int) -> Float[Tensor, "height width 3"]:
        return self._still_outputs(cameras, view)["rgb"]

    @torch.no_grad()
    def render_surface(self, cameras: Cameras, view: int) -> SurfaceRender:
        return self.surface_render(cameras[view : view + 1], self._still_outputs(cameras, view))

    def ray_depth(self, camera: Cameras, outputs: Dict[str, Tensor]) -> Float[Tensor, "height width"]:
        # splatfacto's depth is gsplat's expected depth ("ED"): camera-space z, not the distance along the ray
        directions = camera.generate_rays(camera_indices=0, keep_shape=True).directions.to(outputs["depth"])
        forward = -camera.camera_to_worlds[0, :3, 2].to(directions)
        return outputs["depth"][..., 0] / (directions @ forward).clamp_min(1e-6)

    def _still_outputs(self, cameras: Cameras, view: int) -> Dict[str, Tensor]:
        was_training, info = self.model.training, getattr(self.model, "info", None)
        self.model.eval()
        outputs = self.model.own_outputs_for_camera(cameras[view : view + 1])  # not the viewer's edit_region
        self.model.train(was_training)
        self.model.info = info  # densification reads the last training render's screen-space gradients
        return outputs

    def begin_edit(self) -> List[torch.nn.Parameter]:
        """Freezes the camera poses; renders at full resolution from here on (splatfacto's coarse-to-fine schedule
        counts global steps, which a short reconstruction may not have passed); and, unless `edit_densify`, stops
        densification, pruning and opacity resets (the authors' edits never densify: they start past
        splatfacto's `stop_split_at`, and their refinement turns splitting off)."""
        self.model.config.num_downscales = 0
        if not self.config.edit_densify:
            self.model.strategy.refine_stop_iter = 0
        return super().begin_edit()

    def parts_in(self, region: PointValue) -> Optional[Bool[Tensor, "num_parts"]]:
        """The Gaussians centred in `region`, with `hold_outside_region` (not with `edit_densify`: densification
        replaces the parameters, and with them their gradient hooks)."""
        if not self.config.hold_outside_region or self.config.edit_densify:
            return None
        with torch.no_grad():
            return (region(self.model.gauss_params["means"].detach()) > 0).cpu()

    def hold_outside(self, free: Optional[Bool[Tensor, "num_parts"]]) -> Optional[str]:
        """Every Gaussian not in `free` takes no gradient: Adam, which moves any parameter with a gradient by up to a
        full learning rate a step, leaves it exactly as the source scene had it."""
        for handle in self._holds:
            handle.remove()
        self._holds = []
        if free is None:
            return None
        for parameter in self.model.gauss_params.values():
            weight = free.to(parameter).view(-1, *([1] * (parameter.dim() - 1)))
            self._holds.append(parameter.register_hook(lambda grad, weight=weight: grad * weight))
        return f"the {int(free.sum())} of {len(free)} Gaussians centred in it"

    def starting_scene_problem(self, pipeline_state: Mapping[str, Tensor]) -> Optional[str]:
        if "_model.gauss_params.means" not in pipeline_state:
            return "it is not a splatfacto scene checkpoint; start from a run of `ns-train splatfacto` or `ns-train pds-splatfacto`"
        return None

    @classmethod
    def edit_optimizers(cls) -> Dict[str, Any]:
        """The authors' optimisers of `pds_splat` and `pds_splat_refinement` (splatfacto's per-parameter rates,
        means decaying from 1.6e-4 to 1.6e-6 over 30,000 steps), started afresh in each edit stage; no camera
        optimiser."""
        return {name: entry for name, entry in splatfacto_optimizers().items() if name not in ("camera_opt", "bilateral_grid")}


@dataclass
class SplatfactoSceneConfig(SceneConfig):
    """Splatfacto as the edit stages train it (`ns-train pds-splat`: `--pipeline.scene.*`)."""

    _target: Type = field(default_factory=lambda: SplatfactoScene)
    edit_densify: bool = False
    """Keep splatfacto's densification (split, duplicate, prune, opacity reset) in the edit stages. Off, as the
    authors' edits are in effect: their runs start past splatfacto's stop_split_at and never densify."""
    hold_outside_region: bool = True
    """With an edit region (--pipeline.edit-region): the edit stages train only the Gaussians centred in the region
    and hold every other one exactly as the source scene has it (measured in docs/editing.md). False: every Gaussian
    trains, and only the keep loss (stage 1) and the source renders outside the region (stage 2) hold the outside.
    Not with edit-densify."""
