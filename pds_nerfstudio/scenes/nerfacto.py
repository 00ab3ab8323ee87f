"""Nerfacto as an editable scene (`ns-train pds`): whole-view renders chunk by chunk, frozen poses and codes, and the
source held outside an edit region."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig

from pds_nerfstudio.fast.fast_encoding import FastEncoding, accelerate_hash_encodings
from pds_nerfstudio.scenes.base import PointValue, SceneAdapter, SceneConfig, SceneRender, SurfaceRender, freeze
from pds_nerfstudio.scenes.nerfacto_hold import HOLD_PREFIX, keep_source, keeps_source
from pds_nerfstudio.scenes.nerfacto_offline import DEPTH_FAR, DEPTH_NEAR
from pds_nerfstudio.scenes.nerfacto_render import render_view

APPEARANCE_KEY = "_model.field.embedding_appearance.embedding.weight"
"""Where a nerfacto checkpoint keeps its per-view appearance codes (nerfstudio 1.1.5)."""


class NerfactoScene(SceneAdapter):
    """A nerfacto model; stage 1 renders a view chunk by chunk, deferring back-propagation when it has several."""

    model: NerfactoModel
    learning_rate_options = "--edit-optimizers.fields.optimizer.lr (and proposal-networks)"
    memory_options = (
        "--pipeline.render-scale 0.5 (stage 1 renders at half resolution), --pipeline.scene.render-chunk-size 4096, "
        "--pipeline.prior.dtype fp16, --pipeline.prior.device cuda:1 (the prior on a second GPU), "
        "--pipeline.datamanager.train-num-rays-per-batch 2048"
    )

    config: NerfactoSceneConfig

    def __init__(self, config: NerfactoSceneConfig, model: NerfactoModel) -> None:
        super().__init__(config, model)
        accelerate_hash_encodings(model, config.fast_encoding)
        self.render_chunk_size = config.render_chunk_size
        """Rays per chunk of a stage-1 render; a benchmark sweeps it in a running pipeline."""

    def render_view(self, cameras: Cameras, view: int) -> SceneRender:
        render = render_view(self.model, cameras, view, self.render_chunk_size, self.config.deferred_backprop)
        losses = {}
        if self.config.pds_proposal_losses:
            losses["interlevel_loss"] = self.model.config.interlevel_loss_mult * render.interlevel_loss
            losses["distortion_loss"] = self.model.config.distortion_loss_mult * render.distortion_loss
        return SceneRender(render.rgb, losses)

    @torch.no_grad()
    def render_still(self, cameras: Cameras, view: int) -> Float[Tensor, "height width 3"]:
        return self._still_outputs(cameras, view)["rgb"]

    @torch.no_grad()
    def render_surface(self, cameras: Cameras, view: int) -> SurfaceRender:
        return self.surface_render(cameras[view : view + 1], self._still_outputs(cameras, view))

    def ray_depth(self, camera: Cameras, outputs: Dict[str, Tensor]) -> Float[Tensor, "height width"]:
        # nerfacto's "depth" is the median distance along the unit ray, where the ray's weight reaches one half
        # (nerfstudio 1.1.5 models/nerfacto.py: renderer_depth = DepthRenderer(method="median"))
        return outputs["depth"][..., 0]

    def ray_stretch(self, camera: Cameras, outputs: Dict[str, Tensor]) -> Tuple[Tensor, Tensor]:
        # where the ray's accumulated weight reaches 0.2 and 0.8, around the median depth at 0.5: a NeRF's surface is
        # a stretch of the ray, and its median can lie in a haze in front of a lit face (OfflineNerfactoModel)
        if DEPTH_NEAR not in outputs:  # a training render, or another model's
            return super().ray_stretch(camera, outputs)
        return outputs[DEPTH_NEAR][..., 0], outputs[DEPTH_FAR][..., 0]

    def _still_outputs(self, cameras: Cameras, view: int) -> Dict[str, Tensor]:
        was_training = self.model.training
        self.model.eval()
        rays = cameras.generate_rays(camera_indices=view, keep_shape=True)
        outputs = self.model.get_outputs_for_camera_ray_bundle(rays)
        self.model.train(was_training)
        return outputs

    def begin_edit(self) -> List[torch.nn.Parameter]:
        """Freezes the camera poses and, when the scene has per-view appearance codes (stock `ns-train nerfacto`),
        replaces every code by their average (what nerfacto renders held-out views with) and freezes it: the
        edit then goes into the scene, not into one code per view, and every view, in training or in
        `ns-render`, shows the same scene."""
        frozen = super().begin_edit()
        embedding = getattr(self.model.field, "embedding_appearance", None)
        if embedding is not None:
            with torch.no_grad():
                weight = embedding.embedding.weight
                weight.copy_(weight.mean(dim=0, keepdim=True).expand_as(weight))
            frozen += freeze(list(embedding.parameters()))
        return frozen

    def keep_source(self) -> None:
        """With `hold_outside_region`: a frozen copy of the field as it is (the source scene), in the model's state
        (:mod:`pds_nerfstudio.scenes.nerfacto_hold`)."""
        if self.config.hold_outside_region and not keeps_source(self.model):
            keep_source(self.model)

    def hold_source_outside(self, region: Optional[PointValue]) -> Optional[str]:
        """The kept source field renders every sample point outside `region`, the edited field inside it (blended by
        the region's value): the edit then changes nothing outside the region, whatever its gradients do to the
        hash grid and colour network that all of space shares."""
        if not keeps_source(self.model):
            return None
        self.model.source_hold.region = region
        return "the field at the points inside it" if region is not None else None

    def fit_to_state(self, pipeline_state: Mapping[str, Tensor]) -> None:
        """A checkpoint of an edit that held its source holds the kept field too: the model makes room for it."""
        if not keeps_source(self.model) and any(key.startswith(f"_model.{HOLD_PREFIX}") for key in pipeline_state):
            keep_source(self.model)

    def starting_scene_problem(self, pipeline_state: Mapping[str, Tensor]) -> Optional[str]:
        expected = [f"_model.{key}" for key in self.model.state_dict() if ".field." in f".{key}"]
        missing = [key for key in expected if key not in pipeline_state]
        if missing:
            return (
                f"it is not a nerfacto scene checkpoint (missing {len(missing)} field weights, e.g. {missing[:2]}); "
                "start from a run of `ns-train nerfacto` or `ns-train pds-nerfacto`"
            )
        return None

    @classmethod
    def edit_optimizers(cls) -> Dict[str, Any]:
        """The optimisers of the authors' `pds` and `pds_refinement` configs: Adam at 1e-2 after a 1000-step
        warm-up, decaying toward 1e-3, for the field and the proposal networks; no camera optimiser (the poses
        stay frozen)."""
        return {
            group: {
                "optimizer": AdamOptimizerConfig(lr=1e-2, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1e-3, warmup_steps=1000),
            }
            for group in ("proposal_networks", "fields")
        }

    @classmethod
    def adopt_starting_checkpoint(
        cls, model_config: NerfactoModelConfig, pipeline_state: Mapping[str, Tensor]
    ) -> Optional[str]:
        """The model has an appearance embedding exactly when the starting checkpoint has one.

        Our methods reconstruct without one (the authors' recipe), stock `ns-train nerfacto` with one code per
        view: such a scene still starts an edit, with the embedding, which the edit replaces by its average and
        freezes (:meth:`begin_edit`).
        """
        weight = pipeline_state.get(APPEARANCE_KEY)
        dim = int(weight.shape[1]) if weight is not None and weight.ndim == 2 else 0
        used = bool(model_config.use_appearance_embedding)
        if (dim > 0) == used and (dim == 0 or dim == model_config.appearance_embed_dim):
            return None
        model_config.use_appearance_embedding = dim > 0
        if dim == 0:
            return None
        model_config.appearance_embed_dim = dim
        return (
            f"has per-view appearance codes ({dim} per view, as stock nerfacto trains): the edit starts from their "
            "average, frozen, so that the edit changes the scene rather than one code per view"
        )


@dataclass
class NerfactoSceneConfig(SceneConfig):
    """Nerfacto as the edit stages render it (`ns-train pds`: `--pipeline.scene.*`)."""

    _target: Type = field(default_factory=lambda: NerfactoScene)
    render_chunk_size: int = 1 << 14
    """Rays per chunk when stage 1 renders a whole view."""
    deferred_backprop: bool = True
    """Stage 1 keeps no render graph and re-renders chunk by chunk in back-propagation: same gradient,
    memory of one chunk (a view of one chunk is rendered once, with its graph). False keeps every chunk's
    graph (the authors' way; the plain reference)."""
    fast_encoding: FastEncoding = "off"
    """Hash encoding of nerfacto's field and proposal networks when tiny-cuda-nn is absent. compile: nerfstudio's
    torch encoding under torch.compile (fused kernels, same values and gradients; compiled on first use, the
    plain encoding, warned, if that fails). triton: one fused Triton kernel each for forward and backward
    (same values, gradients to float32 rounding; the plain encoding, warned, where Triton cannot build it;
    on CPU it runs in Triton's slow interpreter). off: as nerfstudio ships it. `ns-train pds` sets compile
    where CUDA is available, else off: on CPU the first use compiles for about half a minute per encoding
    shape, more than short CPU runs gain."""
    pds_proposal_losses: bool = False
    """Add nerfacto's proposal losses (interlevel and distortion) to stage 1, so that the proposal networks
    follow geometry that the guidance changes. Off: stage 1 has the guidance loss alone, as in the authors'
    code; the proposal networks are retrained in stage 2 by nerfacto's own losses."""

    hold_outside_region: bool = False
    """With an edit region (--pipeline.edit-region): the edit keeps a frozen copy of the source field and renders it at
    every point outside the region, so that nothing outside changes (measured in docs/editing.md). Costs one more
    field evaluation per sample (without gradient) and the field's size again in memory and checkpoints. False: the
    whole field trains, and only the keep loss (stage 1) and the source renders outside the region (stage 2) hold
    the outside."""

    def positive_options(self) -> Tuple[str, ...]:
        return ("render_chunk_size",)
