"""SPEC stage 1 (PDS): render one training view whole, encode it with the prior and back-propagate the guidance
gradient into the scene; every `log_every` steps, a log panel of the step (:mod:`pds_nerfstudio.edit.log_panel`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.utils import writer

from pds_nerfstudio.data.datamanager import EditableImages
from pds_nerfstudio.edit import draws, log_panel
from pds_nerfstudio.edit.live_settings import LiveSettings
from pds_nerfstudio.edit.region_store import EditRegion
from pds_nerfstudio.edit.stages import Stage, StageSchedule
from pds_nerfstudio.guidance import GuidanceOutput, surrogate_loss
from pds_nerfstudio.guidance.resizing import from_prior_output, to_prior_input
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior
from pds_nerfstudio.scenes.base import SceneAdapter

class PdsOptions(Protocol):
    """What stage 1 reads of the pipeline's config (EditPipelineConfig's fields of these names)."""

    change_view_every: int
    seed: int
    pds_loss_mult: float
    log_every: int
    edit_region_keep_mult: float
    edit_region_outside_guidance: float


class PdsStage:
    """Stage 1's steps on `scene`, with the views and source images of `datamanager` and the prior `prior()`."""

    def __init__(
        self,
        config: PdsOptions,
        live: LiveSettings,
        scene: SceneAdapter,
        datamanager: EditableImages,
        prior: Callable[[], DiffusionPrior],
        schedule: StageSchedule,
        device: torch.device | str,
    ) -> None:
        self.config, self.live, self.scene, self.datamanager = config, live, scene, datamanager
        self.prior, self.schedule, self.device = prior, schedule, device
        self._source_latents: Dict[Tuple[int, Tuple[int, int]], Tensor] = {}
        self._render_cameras: Optional[Tuple[float, Any]] = None  # (render_scale, cameras)
        self._probe: Optional[Tensor] = None
        self.region: Optional[EditRegion] = None
        """With an edit region, the guidance gradient of each view is weighted by the view's region."""

    def step(self, step: int, run_dir: Optional[Path]) -> Tuple[Dict[str, Tensor], Dict[str, Tensor], Dict[str, Any]]:
        """Outputs, losses and metrics of stage-1 step `step`; a log step also saves its panel under `run_dir`."""
        view = self.view_for_step(step)
        render = self.scene.render_view(self.render_cameras(), view)
        guidance_loss, result = self.guidance_loss(render.rgb, view, step)
        loss_dict = {"guidance_loss": guidance_loss, **render.losses}
        if self.region is not None and self.config.edit_region_keep_mult > 0:
            loss_dict["region_keep_loss"] = self.config.edit_region_keep_mult * self.region.keep_loss(view, render.rgb)
        # tensors, not floats: nerfstudio reads them only on logging steps, so no step waits for the GPU here
        metrics_dict = {"timestep": result.t[0].detach(), "view": float(view), "grad_norm": result.grad.detach().norm()}
        if self.is_log_step(step):
            self.log(step, view, render.rgb.detach(), result.grad, run_dir)
        return {"rgb": render.rgb}, loss_dict, metrics_dict

    def view_for_step(self, step: int) -> int:
        """Training view of stage-1 step `step`: one view per `change_view_every` steps, drawn at random."""
        block = (step - self.schedule.start(Stage.PDS)) // self.config.change_view_every
        return draws.stage1_view(self.config.seed, block, self.datamanager.num_train_images)

    def render_cameras(self):
        """Training cameras at the live render scale of their resolution, on the scene's device (cached per scale)."""
        scale = self.live.render_scale
        if self._render_cameras is None or self._render_cameras[0] != scale:
            cameras = copy.deepcopy(self.datamanager.train_dataset.cameras)
            if scale != 1.0:
                cameras.rescale_output_resolution(scale)
            self._render_cameras = (scale, cameras.to(self.device))
        return self._render_cameras[1]

    def source_latent(self, view: int, size: Tuple[int, int]) -> Float[Tensor, "1 4 h w"]:
        """Latent of the original training image `view` at the prior's `size`; cached, no gradient."""
        key = (view, size)
        if key not in self._source_latents:
            image = self.datamanager.original_image(view)[..., :3].to(self.device)
            with torch.no_grad():
                self._source_latents[key] = self.prior().encode(to_prior_input(image, size))
        return self._source_latents[key]

    def guidance_loss(
        self, rgb: Float[Tensor, "height width 3"], view: int, step: int
    ) -> Tuple[Float[Tensor, ""], GuidanceOutput]:
        """The diffusion half of a stage-1 step: encode `rgb` (with gradient), the guidance gradient of the
        live guidance at `view` and `step` (SPEC steps 2-7), and the surrogate loss that carries it (step 8)."""
        guidance, prior = self.live.guidance, self.prior()
        size = prior.input_size(*rgb.shape[:2])
        if self.region is not None:  # the same image, whose pixels pass on the gradient in the share of the region
            floor = self.config.edit_region_outside_guidance
            weight = floor + (1 - floor) * self.region.pixel_weight(view, tuple(rgb.shape[:2])).to(rgb)[..., None]
            rgb = weight * rgb + (1 - weight) * rgb.detach()
        x0_tgt = prior.encode(to_prior_input(rgb, size))
        x0_src = self.source_latent(view, size) if guidance.needs_source else None
        generator = draws.generator(self.config.seed, draws.Stream.GUIDANCE, step)
        progress = (step - self.schedule.start(Stage.PDS), self.schedule.pds)  # for the annealed schedule
        result = guidance.guidance_gradient(prior, x0_tgt, x0_src, generator, progress)
        return self.config.pds_loss_mult * surrogate_loss(x0_tgt, result.grad).to(self.device), result

    def is_log_step(self, step: int) -> bool:
        """Whether stage-1 step `step` writes a log panel (and the trainer checks for a stall)."""
        start = self.schedule.start(Stage.PDS)
        return self.schedule.stage_at(step) is Stage.PDS and (step - start) % self.config.log_every == 0

    @torch.no_grad()
    def probe_renders(self, count: int = 3) -> Float[Tensor, "views height width 3"]:
        """Renders of `count` training views spread over the capture (the first, the last, between), at the
        stage-1 render scale: what stage 1's convergence watches."""
        num_views = self.datamanager.num_train_images
        views = torch.linspace(0, num_views - 1, min(count, num_views)).round().long().tolist()
        return torch.stack([self.scene.render_still(self.render_cameras(), view) for view in views])

    @torch.no_grad()
    def probe_change(self) -> Optional[float]:
        """Largest change of training view 0's render (at the stage-1 render scale) since the last call; None at
        the first call."""
        render = self.scene.render_still(self.render_cameras(), 0)
        previous, self._probe = self._probe, render
        return None if previous is None else float((render - previous).abs().max())

    def log(self, step: int, view: int, render: Tensor, grad: Tensor, run_dir: Optional[Path]) -> None:
        """The log panel of `view` at `step`, to tensorboard and, with a run directory, to its logs folder."""
        height, width = render.shape[:2]
        source = self.datamanager.original_image(view)[..., :3].to(render.device)
        source = from_prior_output(to_prior_input(source, (height, width)), (height, width))
        magnitude = grad.float().norm(dim=1, keepdim=True)
        magnitude = magnitude / magnitude.max().clamp_min(1e-12)
        magnitude = from_prior_output(magnitude.expand(-1, 3, -1, -1).to(render.device), (height, width))
        panel = log_panel.compose(source, render.clamp(0, 1), magnitude)
        writer.put_image(name=log_panel.TITLE, image=panel, step=step)
        if run_dir is not None:
            name = Path(self.datamanager.train_dataparser_outputs.image_filenames[view]).stem
            log_panel.save(panel, run_dir, step, name)
