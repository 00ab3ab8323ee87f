"""The edit pipeline: reconstruction, PDS optimisation and SDEdit refinement of a scene, once for every scene kind.

Which stage a step runs is decided by :class:`StageSchedule` from the global step alone. Stage 1 is
:class:`PdsStage` (:mod:`pds_nerfstudio.edit.pds_stage`), stage 2 :class:`RefinementStage`, and the renders that
pass between them (and to a resumed run) are kept by :class:`RenderStore`; this module holds the options, the
viewer, the prior and the dispatch. What depends on the scene representation (nerfacto, splatfacto) is behind
:class:`pds_nerfstudio.scenes.base.SceneAdapter`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Type

import torch
from jaxtyping import Float
from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE, get_progress
from nerfstudio.viewer.viewer_elements import ViewerNumber, ViewerText

from pds_nerfstudio.data.scene_checks import validate_scene
from pds_nerfstudio.edit.live_settings import LiveSettings
from pds_nerfstudio.edit.pds_stage import PdsStage
from pds_nerfstudio.edit.refinement_stage import RefinementStage
from pds_nerfstudio.edit.edit_region import EmptyRegionError, RegionGrid, box_grid
from pds_nerfstudio.edit.region_store import (
    REGION_OUTPUT,
    EditRegion,
    EditRegionError,
    RegionStore,
    diffedit_masks,
    estimate_region,
    folder_masks,
    region_in_views,
    region_seen_along,
)
from pds_nerfstudio.edit.render_store import RenderStore
from pds_nerfstudio.edit.convergence import LossPlateau, RenderConvergence
from pds_nerfstudio.edit.stages import STAGE_LENGTHS_KEY, STAGE_RUN_LENGTHS_KEY, Stage, StageSchedule
from pds_nerfstudio.guidance.options import GuidanceOptions, flag, validate_guidance_scale, validate_prompts
from pds_nerfstudio.prior.lora import check_lora
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
from pds_nerfstudio.scenes.base import SceneAdapter, SceneConfig


OPTION_PREFIX = "--pipeline."
"""How `ns-train` spells the pipeline's options."""
SCENE_OPTION_PREFIX = f"{OPTION_PREFIX}scene."
"""How `ns-train` spells the scene kind's options."""


@dataclass
class EditPipelineConfig(VanillaPipelineConfig, GuidanceOptions):
    """Edit a scene from a source prompt to a target prompt with PDS (the options every scene kind shares; the
    guidance's, from prompts to timesteps, are GuidanceOptions')."""

    _target: Type = field(default_factory=lambda: EditPipeline)
    scene: SceneConfig = field(default_factory=SceneConfig)
    """The scene kind's own edit options (nerfacto's render chunks, splatfacto's densification, ...); its
    `_target` is the adapter through which the edit reaches the model."""
    prior: DiffusionPriorConfig = field(default_factory=DiffusionPriorConfig)
    """The Stable Diffusion prior: checkpoint (hub id or folder), dtype and device."""
    reconstruction_iterations: int = 30000
    """Stage 0: iterations of the scene's own method (nerfacto, splatfacto) from scratch; skipped when a checkpoint
    is loaded (the run starts after it)."""
    pds_iterations: int = 30000
    """Stage 1: PDS iterations."""
    refinement_iterations: int = 15000
    """Stage 2: refinement iterations."""
    change_view_every: int = 10
    """Stage 1 keeps one training view for this many iterations, then draws another at random."""
    render_scale: float = 1.0
    """Stage 1 renders at this fraction of the training resolution (then resizes for the prior); < 1 saves memory."""
    pds_loss_mult: float = 1.0
    """Weight of the guidance loss in stage 1."""
    sdedit_every: int = 10
    """Stage 2 replaces one training image every this many iterations, visiting every view once per cycle."""
    sdedit_order: Literal["shuffled", "in-order"] = "shuffled"
    """The order of each cycle of stage 2's replacements. `in-order` is the authors' (views 0, 1, 2, ...: in a
    capture these are neighbouring cameras, so one side of the scene is replaced before the other);
    `shuffled` draws a permutation per cycle from the seed, spreading the replaced views around the scene.
    Measured against each other in docs/fidelity.md."""
    sdedit_guidance_scale: float = 15.0
    """Classifier-free guidance of stage 2's SDEdit."""
    sdedit_num_inference_steps: int = 20
    """DDIM steps N of the full denoising trajectory SDEdit starts from."""
    sdedit_min_step_ratio: float = 0.0
    """Smallest SDEdit noise level, as a fraction of N."""
    sdedit_max_step_ratio: float = 0.2
    """Largest SDEdit noise level, as a fraction of N (0.2 of 20: up to 4 DDIM steps)."""
    log_every: int = 100
    """Stage 1 writes a source | render | gradient image every this many iterations."""
    stall_intervals: int = 3
    """Warn when, for this many logging intervals in a row, no guidance gradient reaches the scene or a probe
    view's render does not change (a stalled edit: the warning names the likely causes)."""
    seed: int = 42
    """Seed of view choice, timesteps and noises: the same seed and step give the same draws."""
    max_nonfinite_steps: int = 20
    """Stop the run after this many consecutive iterations whose loss or gradients were not finite (each one is
    skipped: under mixed precision nerfstudio's GradScaler skips it and backs off, else the step is dropped)."""
    stop_when_converged: bool = False
    """End stage 1 when the renders of fixed probe views have stopped changing, and stage 2 when every training
    view has been refined and the loss has plateaued; the stage lengths become caps. Why and where each stage
    ended is printed, written to run_dir/stage_ends.json and kept in the checkpoints (a resumed run ends its
    stages where the uninterrupted one would have)."""
    convergence_window: int = 10
    """With stop-when-converged: the stages are checked every this many iterations."""
    convergence_threshold: float = 0.05
    """With stop-when-converged: a window is calm when, in stage 1, the smoothed probe renders moved by less than this
    fraction of their change since the stage's first check, or, in stage 2, the mean loss by less than this
    fraction of itself."""
    convergence_smoothing: float = 0.7
    """With stop-when-converged: stage 1 compares exponential moving averages of the probe renders, updated at each
    check with this weight on the past (0: the renders themselves), so that the jitter of single PDS steps, each at
    its own timestep and noise, does not read as change."""
    convergence_patience: int = 3
    """With stop-when-converged: calm windows in a row that end a stage."""
    convergence_min_iterations: int = 30
    """With stop-when-converged: stage 1 runs at least this many iterations (stage 2 runs until every training
    view has been refined once)."""
    edit_region: Literal["off", "auto", "box"] = "off"
    """Where the edit may change the scene. `auto`: estimated where stage 1 starts from the prior itself (DiffEdit's
    mask of every training image: where the source and target prompts' noise predictions differ), fused over the
    views into one 3D region with the source scene's depth; stage 1 weights the guidance gradient by it and stage 2
    keeps the source scene's render outside it. `box`: your own box (edit-region-obb-*), used in the same way.
    Written to run_dir/edit_region/ and shown in the viewer as the output `edit_region`. `off`: the whole image (the
    authors')."""
    edit_region_dilation: int = 1
    """With edit-region auto: voxels by which the fused region grows (a margin at the masks' edge)."""
    edit_region_grow: float = 0.0
    """With an edit region: each view's region grows by a disc of this fraction of its width, so that a shape edit can
    draw outside the object it starts from (a sphere's region holds a cube of its size at 0.21); 0: the region
    itself, for edits of colour or material."""
    edit_region_keep_mult: float = 10.0
    """With an edit region: weight of a stage-1 loss that keeps each render outside the region at the source
    scene's render (squared colour distance, averaged over pixels; measured in docs/editing.md); 0: the guidance
    alone, passed through the region."""
    edit_region_outside_guidance: float = 0.0
    """With an edit region: the share of stage 1's guidance gradient that still reaches the scene outside the region
    (0: none; 1: all of it, as without a region). PDS's source term there pulls the render toward the source."""
    edit_region_masks: Optional[Path] = None
    """With edit-region auto: a folder of your own masks, one image per training image named as it (white edits,
    black keeps), used instead of the prior's DiffEdit masks; they are fused over the views in the same way."""
    edit_region_obb_center: Optional[Tuple[float, float, float]] = None
    """With edit-region box: the centre of your box, in the scene's coordinates as the viewer's crop box and
    `ns-export --obb-center` give them (all three edit-region-obb-* are needed)."""
    edit_region_obb_rotation: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    """With edit-region box: its rotation, roll, pitch and yaw in radians (the viewer's crop rotation)."""
    edit_region_obb_scale: Optional[Tuple[float, float, float]] = None
    """With edit-region box: its size along each of its axes (the viewer's crop scale)."""
    edit_region_resolution: int = 64
    """With an edit region: voxels along each side of the region's grid (a cube around the masked points, half
    their extent again on every side)."""

    @property
    def scene_kind(self) -> Type[SceneAdapter]:
        """The adapter class of the scene kind this config edits (its optimiser groups, its checkpoint adoption)."""
        return self.scene._target

    def stage_schedule(self) -> StageSchedule:
        """The stage lengths as a schedule."""
        return StageSchedule(self.reconstruction_iterations, self.pds_iterations, self.refinement_iterations)

    def validate(self) -> None:
        """Refuses bad options before anything heavy loads (prompts, scales, ranges, counts)."""
        self.validate_guidance(OPTION_PREFIX)
        if self.prior.lora is not None:  # a LoRA of another base model is refused before anything loads
            check_lora(self.prior.lora, self.prior.model_id)
        validate_guidance_scale(self.sdedit_guidance_scale, flag(OPTION_PREFIX, "sdedit_guidance_scale"))
        self.stage_schedule()
        if not 0.0 <= self.sdedit_min_step_ratio <= self.sdedit_max_step_ratio <= 1.0:
            raise ValueError(
                f"{flag(OPTION_PREFIX, 'sdedit_min_step_ratio')} and {flag(OPTION_PREFIX, 'sdedit_max_step_ratio')} must "
                f"satisfy 0 <= min <= max <= 1, got {self.sdedit_min_step_ratio} and {self.sdedit_max_step_ratio}"
            )
        for options, prefix, names in (
            (self, OPTION_PREFIX, ("change_view_every", "sdedit_every", "log_every", "stall_intervals", "max_nonfinite_steps",
                                   "convergence_window", "convergence_patience")),
            (self.scene, SCENE_OPTION_PREFIX, self.scene.positive_options()),
        ):  # fmt: skip
            for name in names:
                if getattr(options, name) < 1:
                    raise ValueError(f"{flag(prefix, name)} must be >= 1, got {getattr(options, name)}")
        if not self.convergence_threshold > 0 or self.convergence_min_iterations < 0:
            raise ValueError(f"{flag(OPTION_PREFIX, 'convergence_threshold')} must be > 0 and "
                             f"{flag(OPTION_PREFIX, 'convergence_min_iterations')} >= 0")  # fmt: skip
        if not 0.0 <= self.convergence_smoothing < 1.0:
            raise ValueError(f"{flag(OPTION_PREFIX, 'convergence_smoothing')} must be in [0, 1), "
                             f"got {self.convergence_smoothing}")  # fmt: skip
        if self.edit_region_masks is not None and not Path(self.edit_region_masks).is_dir():
            raise ValueError(f"{flag(OPTION_PREFIX, 'edit_region_masks')} {self.edit_region_masks} is not a folder")
        if self.edit_region_masks is not None and self.edit_region != "auto":
            raise ValueError(f"{flag(OPTION_PREFIX, 'edit_region_masks')} needs {flag(OPTION_PREFIX, 'edit_region')} auto")
        box_given = [value is not None for value in (self.edit_region_obb_center, self.edit_region_obb_scale)]
        if (self.edit_region == "box" and not all(box_given)) or (self.edit_region != "box" and any(box_given)):
            raise ValueError(f"{flag(OPTION_PREFIX, 'edit_region')} box needs {flag(OPTION_PREFIX, 'edit_region_obb_center')} "
                             f"and {flag(OPTION_PREFIX, 'edit_region_obb_scale')} (the viewer's crop box), and they need "
                             f"{flag(OPTION_PREFIX, 'edit_region')} box")  # fmt: skip
        if self.edit_region_obb_scale is not None and not all(value > 0 for value in self.edit_region_obb_scale):
            raise ValueError(f"{flag(OPTION_PREFIX, 'edit_region_obb_scale')} must be > 0 on every axis, "
                             f"got {self.edit_region_obb_scale}")  # fmt: skip
        if self.edit_region == "auto" and self.edit_region_masks is None and not self.source_prompt.strip():
            raise ValueError(f"{flag(OPTION_PREFIX, 'edit_region')} auto needs the source prompt: set "
                             f"{flag(OPTION_PREFIX, 'source_prompt')} (the region is where it and the target differ)")
        if (self.edit_region_dilation < 0 or self.edit_region_resolution < 4 or self.edit_region_keep_mult < 0
                or not 0 <= self.edit_region_grow <= 2 or not 0 <= self.edit_region_outside_guidance <= 1):
            raise ValueError(f"{flag(OPTION_PREFIX, 'edit_region_dilation')}, "
                             f"{flag(OPTION_PREFIX, 'edit_region_grow')} (at most 2), "
                             f"{flag(OPTION_PREFIX, 'edit_region_outside_guidance')} (at most 1) and "
                             f"{flag(OPTION_PREFIX, 'edit_region_keep_mult')} must be >= 0, and "
                             f"{flag(OPTION_PREFIX, 'edit_region_resolution')} >= 4")  # fmt: skip
        if not 0.0 < self.render_scale <= 1.0:
            raise ValueError(f"{flag(OPTION_PREFIX, 'render_scale')} must be in (0, 1], got {self.render_scale}")
        if isinstance(self.datamanager.dataparser, NerfstudioDataParserConfig):  # other formats: their parser checks
            validate_scene(self.datamanager.data or self.datamanager.dataparser.data)


class EditPipeline(VanillaPipeline):
    """Runs the stage that the global step falls in (:mod:`pds_nerfstudio.edit.stages`) on any scene adapter."""

    config: EditPipelineConfig

    def __init__(
        self,
        config: EditPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler: Optional[GradScaler] = None,
    ) -> None:
        if test_mode == "val":  # training: refuse bad options before the scene loads
            config.validate()
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.scene: SceneAdapter = config.scene.setup(model=self.model)
        self.caps = config.stage_schedule()
        """The stage lengths the options give; with stop-when-converged a stage may end before its cap."""
        self.schedule = self.caps
        """The stage lengths of this run (the caps, less where a stage ended on convergence)."""
        lengths = torch.tensor([self.schedule.reconstruction, self.schedule.pds, self.schedule.refinement])
        self.register_buffer(STAGE_LENGTHS_KEY, lengths)  # the options: how a checkpoint is known to be an edit's
        self.register_buffer(STAGE_RUN_LENGTHS_KEY, lengths.clone())  # what the stages run: shorter when converged
        self.pds_convergence = RenderConvergence(
            config.convergence_threshold, config.convergence_patience, config.convergence_min_iterations,
            config.convergence_smoothing,
        )
        self.refinement_plateau = LossPlateau(config.convergence_threshold, config.convergence_patience)
        self._resumed_rng: Optional[Dict[str, Any]] = None
        self.stage_ends: dict = {}
        """Each ended stage's last step, iterations, cap, why it ended and the seconds this process ran it (also
        run_dir/stage_ends.json)."""
        self._stage_started: Dict[Stage, float] = {}
        """When this process began each stage's first step (time.perf_counter); a resumed stage from its resume."""
        self._prior = DiffusionPrior(config.prior)  # not a Module: its weights stay out of checkpoints
        self.live = LiveSettings(config.guidance_options(), config.render_scale)
        self.pds = PdsStage(config, self.live, self.scene, self.datamanager, self.prior, self.schedule, self.device)
        self.refinement = RefinementStage(config, self.live, self.datamanager, self.prior, self.schedule, self.device)
        self.renders = RenderStore(self.datamanager.train_dataparser_outputs.image_filenames)
        self.region_store = RegionStore(self.renders)
        self.region: Optional[EditRegion] = None
        """With an edit region: every training view's region and source render, once stage 1 (or 2) has begun."""
        self._region_grid: Optional[RegionGrid] = None
        self.run_dir: Optional[Path] = None
        """Where the run writes its logs and renders (set by the trainer); None: nowhere."""
        self._stage_shown: Optional[Stage] = None
        self.viewer_stage = ViewerText("Edit stage", "", disabled=True, hint="The stage the edit is in")
        self.viewer_source_prompt = ViewerText(
            "Source prompt", config.source_prompt, cb_hook=self._on_prompt_change, hint="Describes the scene as is"
        )
        self.viewer_target_prompt = ViewerText(
            "Target prompt", config.target_prompt, cb_hook=self._on_prompt_change, hint="Describes the edit"
        )
        self.viewer_guidance_scale = ViewerNumber(
            "Guidance scale", config.guidance_scale, cb_hook=self._on_guidance_change, hint="Stage 1 guidance"
        )

    # ----------------------------------------------------------------- viewer

    def _on_prompt_change(self, _: ViewerText) -> None:
        source, target = self.viewer_source_prompt.value, self.viewer_target_prompt.value
        try:
            validate_prompts(source, target, OPTION_PREFIX, needs_source=self.live.guidance.needs_source)
        except ValueError as error:
            CONSOLE.print(f"[bold yellow]Prompt not changed: {error}")
            return
        self.live.with_prompts(source, target)
        CONSOLE.print(f"Prompts now: {source!r} -> {target!r}")

    def _on_guidance_change(self, element: ViewerNumber) -> None:
        if element.value > 0:
            self.live.with_guidance_scale(float(element.value))
        else:
            CONSOLE.print("[bold yellow]Guidance scale not changed: it must be > 0")

    def _show_stage(self, stage: Stage, step: int) -> None:
        if stage is not self._stage_shown:
            self._stage_shown = stage
            number = list(Stage).index(stage)
            CONSOLE.rule(f"Stage {number}: {stage.value} (from step {step})")
        self.viewer_stage.value = f"{list(Stage).index(stage)}: {stage.value}, step {step}"

    # ------------------------------------------------------------------ prior

    def prior(self) -> DiffusionPrior:
        """The diffusion prior, loaded on first use (rendering a saved run never loads it)."""
        self._prior.load()
        return self._prior

    # --------------------------------------------------------------- training

    def freeze_for_edit(self) -> List[torch.nn.Parameter]:
        """What the edit stages must not train (the scene's camera poses, ...), frozen; see `SceneAdapter.begin_edit`."""
        return self.scene.begin_edit()

    def get_train_loss_dict(self, step: int):
        self._restore_random_states()
        stage = self.schedule.stage_at(step)
        self._show_stage(stage, step)
        if stage in (Stage.PDS, Stage.REFINEMENT) and self.config.edit_region != "off" and self.region is None:
            self.use_region(self.edit_region(starts_edit=step == self.schedule.start(Stage.PDS)))
        if stage is Stage.PDS:
            return self.pds.step(step, self.run_dir)
        if stage is Stage.REFINEMENT:
            if self.refinement.stage1_renders is None:  # a run that starts in stage 2: the stage-1 result, read or rendered
                renders = self.renders.read(self.run_dir, Stage.PDS)
                self.refinement.begin(renders if renders is not None else self.render_training_views(Stage.PDS))
            self.refinement.step(step)
        return super().get_train_loss_dict(step)

    def edit_region(self, starts_edit: bool) -> EditRegion:
        """The run's edit region: this run's (or a resumed run's predecessor's, copied by `restore_edits`), else
        estimated from the scene as it is (the source scene where the edit starts) and written with the run."""
        region = self.region_store.read(self.run_dir)
        if region is not None:
            return region
        if not starts_edit:
            CONSOLE.print("[bold yellow]The edit region of the earlier run was not found: estimating it from the loaded "
                          "scene, which the edit has already changed")  # fmt: skip
        cameras = self.datamanager.train_dataset.cameras.to(self.device)
        if self.config.edit_region == "box":
            region = region_in_views(self.scene, cameras, self.datamanager.num_train_images, self.user_box(),
                                     self.config.edit_region_grow)  # fmt: skip
            return self.keep_region(region)
        prompts = (self.live.guidance.source_prompt, self.live.guidance.target_prompt)
        if self.config.edit_region_masks is not None:
            mask_of = folder_masks(self.config.edit_region_masks, self.datamanager.train_dataparser_outputs.image_filenames)
        else:
            mask_of = diffedit_masks(self.prior(), prompts, self.config.seed)
        try:
            region = estimate_region(self.scene, cameras, self.datamanager.original_image,
                                     self.datamanager.num_train_images, mask_of, self.config.edit_region_resolution,
                                     self.config.edit_region_dilation, self.config.edit_region_grow)  # fmt: skip
        except EmptyRegionError as error:
            if self.config.edit_region_masks is not None:
                raise EditRegionError(f"{flag(OPTION_PREFIX, 'edit_region_masks')} {self.config.edit_region_masks}: "
                                      "no mask has any white pixel (white edits, black keeps)") from None  # fmt: skip
            raise EditRegionError(f"{flag(OPTION_PREFIX, 'edit_region')} auto: {error} between {prompts[0]!r} and "
                                  f"{prompts[1]!r}; name the part to change in the target prompt, or use "
                                  f"{flag(OPTION_PREFIX, 'edit_region')} off") from None  # fmt: skip
        return self.keep_region(region)

    def keep_region(self, region: EditRegion) -> EditRegion:
        """`region`, with the scene's parts that lie in it (decided here, on the scene as it is), written with the run."""
        if region.grid is not None:
            region.parts = self.scene.parts_in(region.grid.lookup)
            self.scene.keep_source()
        self.region_store.write(self.run_dir, region)
        return region

    def user_box(self) -> RegionGrid:
        """The region of edit-region box: the user's oriented box, as nerfstudio builds the viewer's crop box."""
        config = self.config
        assert config.edit_region_obb_center is not None and config.edit_region_obb_scale is not None
        box = OrientedBox.from_params(config.edit_region_obb_center, config.edit_region_obb_rotation,
                                      config.edit_region_obb_scale)  # fmt: skip
        return box_grid(box.R, box.T, box.S, config.edit_region_resolution)

    def use_region(self, region: Optional[EditRegion]) -> None:
        """Stage 1 weights its guidance by `region`, and stage 2 keeps the source outside it (None: everywhere); the
        viewer shows its 3D region as the output `edit_region`."""
        self.region = self.pds.region = self.refinement.region = region
        held = [self.scene.hold_outside(region.parts if region is not None else None),
                self.place_region(region.grid if region is not None else None)]  # fmt: skip
        for trained in filter(None, held):
            CONSOLE.print(f"Edit region: the edit trains {trained} and holds the rest as the source scene has it")

    def place_region(self, grid: Optional[RegionGrid]) -> Optional[str]:
        """The 3D region in the scene's renders (None: none), in training and in a loaded run alike: the output
        `edit_region` (the viewer's output list, `ns-render`), `grid` at each pixel's surface point grown as the
        training views' are; and, for a scene that keeps its source, where it renders the edit: `grid` grown in 3D by
        edit-region-grow (so that a shape edit can draw past the object it starts from). Returns what the edit then
        changes of a scene that keeps its source, in words (None: it keeps none)."""
        self._region_grid = grid
        self.scene.show_output(REGION_OUTPUT, region_seen_along(grid, self.config.edit_region_grow) if grid is not None else None)
        return self.scene.hold_source_outside(grid.grown(self.config.edit_region_grow).lookup if grid is not None else None)

    def gradient_norm(self) -> float:
        """Norm of the gradients that the last back-propagation left on the scene's trainable parameters."""
        grads = [p.grad.detach().float().norm() for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    # ------------------------------------------------------- stage ends

    def end_stage_if_converged(self, step: int, loss: Tensor) -> Optional[str]:
        """With `stop_when_converged`, after training step `step` (its total `loss`): ends its stage there when the
        stage has converged (:mod:`pds_nerfstudio.edit.convergence`), and says so; else None."""
        if not self.config.stop_when_converged:
            return None
        stage = self.schedule.stage_at(step)
        iterations = step - self.schedule.start(stage) + 1
        if stage is Stage.REFINEMENT:
            self.refinement_plateau.add(loss)
        if stage not in (Stage.PDS, Stage.REFINEMENT) or iterations % self.config.convergence_window != 0:
            return None
        if self.schedule.is_last_step_of_stage(step):
            return None  # it ends here anyway
        if stage is Stage.PDS:
            detector, reason = self.pds_convergence, self.pds_convergence.record(iterations, self.pds.probe_renders())
        else:  # every view refined once first
            every_view = self.datamanager.num_train_images * self.config.sdedit_every
            detector, reason = self.refinement_plateau, self.refinement_plateau.record(iterations, every_view)
        self._log_convergence(stage, step, iterations, detector.ratio)
        if reason is None:
            return None
        self._use_schedule(self.schedule.ended_at(stage, step))
        return self._record_stage_end(stage, step, self.caps.length(stage), reason)

    def _log_convergence(self, stage: Stage, step: int, iterations: int, ratio: Optional[float]) -> None:
        """Each check's change ratio, to tensorboard and run_dir/convergence.csv (what the threshold is held to)."""
        if ratio is None:
            return
        writer.put_scalar(name=f"Convergence/{stage.value} change ratio", scalar=ratio, step=step)
        if self.run_dir is not None:
            path = self.run_dir / "convergence.csv"
            new = not path.exists()
            with open(path, "a") as log:
                log.write("stage,step,iterations,ratio\n" if new else "")
                log.write(f"{stage.value},{step},{iterations},{ratio:.6f}\n")

    def _record_stage_end(self, stage: Stage, step: int, cap: int, reason: str) -> str:
        iterations = step - self.schedule.start(stage) + 1
        self.stage_ends[stage.value] = {"last_step": step, "iterations": iterations, "cap": cap, "reason": reason}
        if stage in self._stage_started:
            self.stage_ends[stage.value]["seconds"] = round(time.perf_counter() - self._stage_started[stage], 2)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "stage_ends.json").write_text(json.dumps(self.stage_ends, indent=2) + "\n")
        number = list(Stage).index(stage)
        return f"Stage {number} ({stage.value}) ended at step {step}, after {iterations} of its {cap} iterations: {reason}"

    def _use_schedule(self, schedule: StageSchedule) -> None:
        self.schedule = self.pds.schedule = self.refinement.schedule = schedule
        lengths = [schedule.reconstruction, schedule.pds, schedule.refinement]
        getattr(self, STAGE_RUN_LENGTHS_KEY).copy_(torch.tensor(lengths))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: Optional[bool] = None):
        self.scene.fit_to_state(state_dict)  # a NeRF's kept source field, say
        super().load_state_dict(state_dict, strict)
        self._use_schedule(StageSchedule(*getattr(self, STAGE_RUN_LENGTHS_KEY).tolist()))  # where its stages end

    def get_extra_state(self) -> Dict[str, Any]:
        """What a resumed edit needs to end its stages where the uninterrupted one would: the convergence
        detectors, the stage ends so far, and the random states of the ray sampling (torch's, Python's)."""
        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        grid = self._region_grid.state() if self._region_grid is not None else None  # the viewer's region, later
        return {"pds": self.pds_convergence.state(), "refinement": self.refinement_plateau.state(),
                "stage_ends": self.stage_ends, "rng": rng, "region_grid": grid}  # fmt: skip

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.pds_convergence.load(state["pds"])
        self.refinement_plateau.load(state["refinement"])
        self.stage_ends = dict(state["stage_ends"])
        self._resumed_rng = state["rng"]  # set at the first step trained, after the set-up's own draws
        if state.get("region_grid") is not None:  # ns-viewer and ns-render of the run show its region
            self.place_region(RegionGrid.from_state(state["region_grid"]))  # and a kept source renders outside it

    def _restore_random_states(self) -> None:
        """A resumed run draws the rays the uninterrupted one would have: the random states its checkpoint held."""
        rng, self._resumed_rng = self._resumed_rng, None
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def restore_edits(self, start_step: int, previous_run: Optional[Path]) -> int:
        """Makes the training images what they were when a killed run reached `start_step`; returns how many
        SDEdits were replayed (:meth:`RefinementStage.replay`). The stage-1 renders come from the earlier run's
        renders/pds/ folder, and are written to this run's for the next resume."""
        if self.config.edit_region != "off" and start_step >= self.schedule.start(Stage.PDS):
            region = self.region_store.read(previous_run)
            if region is not None:  # the same region as the killed run, kept with this run too
                self.region_store.write(self.run_dir, region)
                self.use_region(region)
        if not self.schedule.start(Stage.REFINEMENT) <= start_step < self.schedule.total:
            return 0
        renders = self.renders.read(previous_run, Stage.PDS)
        if renders is None:
            CONSOLE.print("[bold yellow]Stage-1 renders of the earlier run not found: rendering the loaded scene instead")
            renders = self.render_training_views(Stage.PDS)
        else:
            self.renders.write(self.run_dir, Stage.PDS, renders)
        return self.refinement.replay(start_step, renders)

    # -------------------------------------------------------------- renders

    @torch.no_grad()
    def render_training_views(self, stage: Stage) -> Float[Tensor, "num_images height width 3"]:
        """Renders every training view at training resolution, as the render store writes them under
        run_dir/renders/<stage>/."""
        cameras = self.datamanager.train_dataset.cameras.to(self.device)
        renders = []
        with get_progress(f"Rendering every training view at the end of stage {list(Stage).index(stage)}") as progress:
            for view in progress.track(range(self.datamanager.num_train_images)):
                renders.append(self.scene.render_still(cameras, view).cpu())
        stacked = self.renders.quantise(torch.stack(renders))
        self.renders.write(self.run_dir, stage, stacked)
        return stacked

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        if training_callback_attributes.trainer is not None:
            self.run_dir = Path(training_callback_attributes.trainer.base_dir)
        callbacks.append(TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._before_step))
        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_step))
        return callbacks

    def _before_step(self, step: int) -> None:
        self._stage_started.setdefault(self.schedule.stage_at(step), time.perf_counter())

    def _after_step(self, step: int) -> None:
        if not self.schedule.is_last_step_of_stage(step):
            return
        stage = self.schedule.stage_at(step)
        if stage is not Stage.RECONSTRUCTION and stage.value not in self.stage_ends:
            self._record_stage_end(stage, step, self.caps.length(stage), "reached its cap")
        renders = self.render_training_views(stage)
        if stage is Stage.PDS and self.schedule.refinement > 0:
            self.refinement.begin(renders)
