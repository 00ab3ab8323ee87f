"""SPEC stage 2 (refinement): the scene trains on the stage-1 renders of every training view, as its own method
trains, and every `sdedit_every` steps one of those images becomes the SDEdit of its view's stage-1 render.

Which view a step replaces, and the SDEdit's noise, are functions of the step (:mod:`pds_nerfstudio.edit.draws`),
so a resumed run recomputes the replaced images instead of storing them (:meth:`RefinementStage.replay`).
"""

from __future__ import annotations

from typing import Callable, Literal, Optional, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.utils.rich_utils import CONSOLE

from pds_nerfstudio.data.datamanager import EditableImages
from pds_nerfstudio.edit import draws
from pds_nerfstudio.edit.live_settings import LiveSettings
from pds_nerfstudio.edit.region_store import EditRegion
from pds_nerfstudio.edit.stages import Stage, StageSchedule
from pds_nerfstudio.guidance import sample_sdedit_steps, sdedit
from pds_nerfstudio.guidance.resizing import from_prior_output, to_prior_input
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior

class RefinementOptions(Protocol):
    """What stage 2 reads of the pipeline's config (EditPipelineConfig's fields of these names)."""

    seed: int
    sdedit_every: int
    sdedit_order: Literal["shuffled", "in-order"]
    sdedit_guidance_scale: float
    sdedit_num_inference_steps: int
    sdedit_min_step_ratio: float
    sdedit_max_step_ratio: float


class RefinementStage:
    """Stage 2's replacements of the training images of `datamanager`, made with the prior `prior()`."""

    def __init__(
        self,
        config: RefinementOptions,
        live: LiveSettings,
        datamanager: EditableImages,
        prior: Callable[[], DiffusionPrior],
        schedule: StageSchedule,
        device: torch.device | str,
    ) -> None:
        self.config, self.live, self.datamanager = config, live, datamanager
        self.prior, self.schedule, self.device = prior, schedule, device
        self.stage1_renders: Optional[Float[Tensor, "num_images height width 3"]] = None
        """What stage 2 trains on and SDEdits: every training view's render at the end of stage 1."""
        self.region: Optional[EditRegion] = None
        """With an edit region, every image stage 2 trains on is the source scene's render outside it."""

    def begin(self, renders: Float[Tensor, "num_images height width 3"]) -> None:
        """Stage 2 trains on the stage-1 renders of every training view (the authors train their refinement on
        the PDS run's renders): every training image becomes its view's render, opaque."""
        self.stage1_renders = renders
        for view in range(self.datamanager.num_train_images):
            self._set_training_image(view, renders[view])

    def step(self, step: int) -> None:
        """Before stage-2 step `step` trains: on an SDEdit step, its view's image is replaced."""
        if (step - self.schedule.start(Stage.REFINEMENT)) % self.config.sdedit_every == 0:
            self.replace_with_sdedit(step)

    def sdedit_view(self, step: int) -> int:
        """The training view that SDEdit step `step` replaces: every view once per cycle of `num_train_images`
        SDEdit steps, in an order drawn from (seed, cycle), or in order (`sdedit_order`)."""
        index = (step - self.schedule.start(Stage.REFINEMENT)) // self.config.sdedit_every
        cycle, position = divmod(index, self.datamanager.num_train_images)
        if self.config.sdedit_order == "in-order":
            return position
        shuffle = draws.generator(self.config.seed, draws.Stream.SDEDIT_ORDER, cycle)
        order = torch.randperm(self.datamanager.num_train_images, generator=shuffle)
        return int(order[position])

    def replace_with_sdedit(self, step: int) -> None:
        """Replaces the training image of `sdedit_view(step)`; a function of the step, the renders and the options."""
        config = self.config
        view, generator = self.sdedit_view(step), draws.generator(config.seed, draws.Stream.SDEDIT, step)
        assert self.stage1_renders is not None, "begin() first"
        source = self.stage1_renders[view].to(self.device)
        height, width = source.shape[:2]
        prior = self.prior()
        num_steps = sample_sdedit_steps(
            config.sdedit_num_inference_steps, (config.sdedit_min_step_ratio, config.sdedit_max_step_ratio), generator
        )
        with torch.no_grad():
            edited = sdedit(
                prior.encode(to_prior_input(source, prior.input_size(height, width))),
                prior.eps_fn(config.sdedit_guidance_scale),
                prior.alphas_cumprod,
                prior.text_embeddings([self.live.guidance.target_prompt]),
                num_steps,
                config.sdedit_num_inference_steps,
                generator=generator,
                **prior.ddim_settings,
            )
            image = from_prior_output(prior.decode(edited), (height, width))
        if not bool(torch.isfinite(image).all()):  # e.g. an fp16 overflow in the prior: keep the image training sees
            CONSOLE.print(f"[bold yellow]Step {step}: the SDEdit of view {view} is not finite; its image is kept "
                          "(--pipeline.prior.dtype fp32 avoids half-precision overflow)")  # fmt: skip
            return
        self._set_training_image(view, image)

    def replay(self, start_step: int, renders: Float[Tensor, "num_images height width 3"]) -> int:
        """Makes the training images what they were when a run that began stage 2 from `renders` reached
        `start_step`; returns how many SDEdits were replayed.

        Every image starts as its view's stage-1 render and is then the SDEdit of the last stage-2 step that
        chose its view; only those SDEdits are recomputed.
        """
        self.begin(renders)
        every = self.config.sdedit_every
        last_step_of_view = {self.sdedit_view(step): step for step in range(self.schedule.start(Stage.REFINEMENT), start_step, every)}
        for step in sorted(last_step_of_view.values()):
            self.replace_with_sdedit(step)
        return len(last_step_of_view)

    def _set_training_image(self, view: int, image: Float[Tensor, "height width 3"]) -> None:
        if self.region is not None:
            image = self.region.composite(view, image)
        current = self.datamanager.current_image(view)
        if current.shape[-1] == 4:  # RGBA training images: a render is the whole picture, background included
            image = torch.cat([image.to(current), torch.ones_like(current[..., 3:])], dim=-1)
        self.datamanager.replace_image(view, image)
