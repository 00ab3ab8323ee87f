"""The edit pipeline: reconstruction, PDS optimisation and SDEdit refinement of a scene, once for every scene kind.

SPEC stage 1 (PDS) renders one training view whole, encodes it with the prior and back-propagates the
guidance gradient into the scene; stage 2 trains on the stage-1 renders of every training view, as the
scene's own method trains, replacing one image every few iterations by an SDEdit of its stage-1 render.
Which stage runs is decided by :class:`StageSchedule` from the global step alone. What depends on the scene
representation (nerfacto, splatfacto) is behind :class:`pds_nerfstudio.scenes.base.SceneAdapter`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor
from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig
from nerfstudio.utils import writer
from nerfstudio.utils.rich_utils import CONSOLE, get_progress
from nerfstudio.viewer.viewer_elements import ViewerNumber, ViewerText

from pds_nerfstudio.data.image_io import save_png
from pds_nerfstudio.data.scene_checks import validate_scene
from pds_nerfstudio.edit import draws
from pds_nerfstudio.edit.stages import STAGE_LENGTHS_KEY, Stage, StageSchedule
from pds_nerfstudio.guidance import GuidanceOutput, sample_sdedit_steps, sdedit, surrogate_loss
from pds_nerfstudio.prior.lora import check_lora
from pds_nerfstudio.guidance.options import GuidanceOptions, flag, validate_guidance_scale, validate_prompts
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
from pds_nerfstudio.guidance.resizing import from_prior_output, prior_size, to_prior_input
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
        validate_guidance_scale(self.sdedit_guidance_scale, "--pipeline.sdedit-guidance-scale")
        self.stage_schedule()
        if not 0.0 <= self.sdedit_min_step_ratio <= self.sdedit_max_step_ratio <= 1.0:
            raise ValueError(
                f"{flag(OPTION_PREFIX, 'sdedit_min_step_ratio')} and {flag(OPTION_PREFIX, 'sdedit_max_step_ratio')} must "
                f"satisfy 0 <= min <= max <= 1, got {self.sdedit_min_step_ratio} and {self.sdedit_max_step_ratio}"
            )
        for options, prefix, names in (
            (self, OPTION_PREFIX, ("change_view_every", "sdedit_every", "log_every", "stall_intervals", "max_nonfinite_steps")),
            (self.scene, SCENE_OPTION_PREFIX, self.scene.positive_options()),
        ):  # fmt: skip
            for name in names:
                if getattr(options, name) < 1:
                    raise ValueError(f"{flag(prefix, name)} must be >= 1, got {getattr(options, name)}")
        if not 0.0 < self.render_scale <= 1.0:
            raise ValueError(f"--pipeline.render-scale must be in (0, 1], got {self.render_scale}")
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
        self.schedule = config.stage_schedule()
        lengths = torch.tensor([self.schedule.reconstruction, self.schedule.pds, self.schedule.refinement])
        self.register_buffer(STAGE_LENGTHS_KEY, lengths)
        self._prior = DiffusionPrior(config.prior)  # not a Module: its weights stay out of checkpoints
        self._source_latents: Dict[Tuple[int, Tuple[int, int]], Tensor] = {}
        self._render_cameras: Optional[Tuple[float, Any]] = None  # (render_scale, cameras)
        self.stage1_renders: Optional[Float[Tensor, "num_images height width 3"]] = None
        self.run_dir: Optional[Path] = None
        self._stage_shown: Optional[Stage] = None
        self._probe: Optional[Tensor] = None
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
            validate_prompts(source, target, OPTION_PREFIX, needs_source=self.config.needs_source)
        except ValueError as error:
            CONSOLE.print(f"[bold yellow]Prompt not changed: {error}")
            return
        self.config.source_prompt, self.config.target_prompt = source, target
        CONSOLE.print(f"Prompts now: {source!r} -> {target!r}")

    def _on_guidance_change(self, element: ViewerNumber) -> None:
        if element.value > 0:
            self.config.guidance_scale = float(element.value)
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

    def _prior_size(self, height: int, width: int) -> Tuple[int, int]:
        prior = self.prior()
        return prior_size(height, width, prior.native_resolution, prior.vae_scale_factor)

    def source_latent(self, view: int, size: Tuple[int, int]) -> Float[Tensor, "1 4 h w"]:
        """Latent of the original training image `view` at the prior's `size`; cached, no gradient."""
        key = (view, size)
        if key not in self._source_latents:
            image = self.datamanager.original_image(view)[..., :3].to(self.device)
            with torch.no_grad():
                self._source_latents[key] = self.prior().encode(to_prior_input(image, size))
        return self._source_latents[key]

    # ------------------------------------------------------------ edit setup

    def freeze_for_edit(self) -> List[torch.nn.Parameter]:
        """What the edit stages must not train (the scene's camera poses, ...), frozen; see `SceneAdapter.begin_edit`."""
        return self.scene.begin_edit()

    # --------------------------------------------------------------- training

    def get_train_loss_dict(self, step: int):
        stage = self.schedule.stage_at(step)
        self._show_stage(stage, step)
        if stage is Stage.PDS:
            outputs, loss_dict, metrics_dict = self._pds_step(step)
        else:
            if stage is Stage.REFINEMENT:
                self._refine_images(step)
            outputs, loss_dict, metrics_dict = super().get_train_loss_dict(step)
        return outputs, loss_dict, metrics_dict

    def is_log_step(self, step: int) -> bool:
        """Whether stage-1 step `step` writes a logging image (and the trainer checks for a stall)."""
        return self.schedule.stage_at(step) is Stage.PDS and (step - self.schedule.start(Stage.PDS)) % self.config.log_every == 0

    def gradient_norm(self) -> float:
        """Norm of the gradients that the last back-propagation left on the scene's trainable parameters."""
        grads = [p.grad.detach().float().norm() for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    @torch.no_grad()
    def probe_change(self) -> Optional[float]:
        """Largest change of training view 0's render (at the stage-1 render scale) since the last call; None at
        the first call."""
        render = self.scene.render_still(self.render_cameras(), 0)
        previous, self._probe = self._probe, render
        return None if previous is None else float((render - previous).abs().max())

    def view_for_step(self, step: int) -> int:
        """Training view of stage-1 step `step`: one view per `change_view_every` steps, drawn at random."""
        block = (step - self.schedule.start(Stage.PDS)) // self.config.change_view_every
        return draws.stage1_view(self.config.seed, block, self.datamanager.num_train_images)

    def render_cameras(self):
        """Training cameras at `render_scale` of their resolution, on the scene's device (cached per scale)."""
        scale = self.config.render_scale
        if self._render_cameras is None or self._render_cameras[0] != scale:
            cameras = copy.deepcopy(self.datamanager.train_dataset.cameras)
            if scale != 1.0:
                cameras.rescale_output_resolution(scale)
            self._render_cameras = (scale, cameras.to(self.device))
        return self._render_cameras[1]

    def _pds_step(self, step: int):
        """SPEC stage 1: render a whole view with gradient and back-propagate the guidance into it."""
        view = self.view_for_step(step)
        render = self.scene.render_view(self.render_cameras(), view)
        guidance_loss, result = self.guidance_loss(render.rgb, view, step)
        loss_dict = {"guidance_loss": guidance_loss, **render.losses}
        # tensors, not floats: nerfstudio reads them only on logging steps, so no step waits for the GPU here
        metrics_dict = {"timestep": result.t[0].detach(), "view": float(view), "grad_norm": result.grad.detach().norm()}
        if self.is_log_step(step):
            self._log_guidance(step, view, render.rgb.detach(), result.grad)
        return {"rgb": render.rgb}, loss_dict, metrics_dict

    def guidance_loss(
        self, rgb: Float[Tensor, "height width 3"], view: int, step: int
    ) -> Tuple[Float[Tensor, ""], GuidanceOutput]:
        """The diffusion half of a stage-1 step: encode `rgb` (with gradient), the guidance gradient of the
        configured method at `view` and `step` (SPEC steps 2-7), and the surrogate loss that carries it (step 8)."""
        config = self.config
        prior = self.prior()
        size = self._prior_size(*rgb.shape[:2])
        x0_tgt = prior.encode(to_prior_input(rgb, size))
        x0_src = self.source_latent(view, size) if config.needs_source else None
        result = config.guidance_gradient(prior, x0_tgt, x0_src, draws.generator(config.seed, draws.Stream.GUIDANCE, step))
        return config.pds_loss_mult * surrogate_loss(x0_tgt, result.grad).to(self.device), result

    def _log_guidance(self, step: int, view: int, render: Tensor, grad: Tensor) -> None:
        """source | render | gradient magnitude, to tensorboard and to run_dir/logs/step-<step>_<image name>.png."""
        height, width = render.shape[:2]
        source = self.datamanager.original_image(view)[..., :3].to(render.device)
        source = from_prior_output(to_prior_input(source, (height, width)), (height, width))
        magnitude = grad.float().norm(dim=1, keepdim=True)
        magnitude = magnitude / magnitude.max().clamp_min(1e-12)
        magnitude = from_prior_output(magnitude.expand(-1, 3, -1, -1).to(render.device), (height, width))
        panel = torch.cat([source, render.clamp(0, 1), magnitude], dim=1)
        writer.put_image(name="PDS/source | render | gradient", image=panel, step=step)
        if self.run_dir is not None:
            name = Path(self.datamanager.train_dataparser_outputs.image_filenames[view]).stem
            save_png(panel, self.run_dir / "logs" / f"step-{step:09d}_{name}.png")

    def _refine_images(self, step: int) -> None:
        """SPEC stage 2: every `sdedit_every` steps, one training image becomes the SDEdit of its stage-1 render."""
        if self.stage1_renders is None:  # a run that starts in stage 2: the stage-1 result, read or rendered now
            renders = self._read_renders(self.run_dir, Stage.PDS) if self.run_dir is not None else None
            self.begin_refinement(renders if renders is not None else self.render_training_views(Stage.PDS))
        if self._is_sdedit_step(step):
            self._replace_with_sdedit(step)

    def begin_refinement(self, renders: Float[Tensor, "num_images height width 3"]) -> None:
        """Stage 2 trains on the stage-1 renders of every training view (the authors train their refinement on
        the PDS run's renders): every training image becomes its view's render, opaque."""
        self.stage1_renders = renders
        for view in range(self.datamanager.num_train_images):
            self._set_training_image(view, renders[view])

    def _set_training_image(self, view: int, image: Float[Tensor, "height width 3"]) -> None:
        current = self.datamanager.current_image(view)
        if current.shape[-1] == 4:  # RGBA training images: a render is the whole picture, background included
            image = torch.cat([image.to(current), torch.ones_like(current[..., 3:])], dim=-1)
        self.datamanager.replace_image(view, image)

    def _is_sdedit_step(self, step: int) -> bool:
        return (step - self.schedule.start(Stage.REFINEMENT)) % self.config.sdedit_every == 0

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

    def _replace_with_sdedit(self, step: int) -> None:
        """Replaces the training image of `sdedit_view(step)`; a function of the step, the renders and the options."""
        config = self.config
        view, generator = self.sdedit_view(step), draws.generator(config.seed, draws.Stream.SDEDIT, step)
        assert self.stage1_renders is not None
        source = self.stage1_renders[view].to(self.device)
        height, width = source.shape[:2]
        prior = self.prior()
        num_steps = sample_sdedit_steps(
            config.sdedit_num_inference_steps, (config.sdedit_min_step_ratio, config.sdedit_max_step_ratio), generator
        )
        with torch.no_grad():
            latent = prior.encode(to_prior_input(source, self._prior_size(height, width)))
            edited = sdedit(
                latent,
                prior.eps_fn(config.sdedit_guidance_scale),
                prior.alphas_cumprod,
                prior.text_embeddings([config.target_prompt]),
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

    def restore_edits(self, start_step: int, previous_run: Optional[Path]) -> int:
        """Makes the training images what they were when a killed run reached `start_step`; returns how many
        SDEdits were replayed.

        In stage 2 every image starts as its view's stage-1 render and is then the SDEdit of the last
        stage-2 step that chose its view; those steps, and the SDEdits themselves, are functions of the
        step (see `step_generator`), so they are recomputed rather than stored. The stage-1 renders come
        from the earlier run's renders/pds/ folder (written as PNG, and kept in memory quantised the same way).
        """
        start = self.schedule.start(Stage.REFINEMENT)
        if start_step < start or start_step >= self.schedule.total:
            return 0
        renders = self._read_renders(previous_run, Stage.PDS) if previous_run is not None else None
        if renders is None:
            CONSOLE.print("[bold yellow]Stage-1 renders of the earlier run not found: rendering the loaded scene instead")
            renders = self.render_training_views(Stage.PDS)
        else:
            self._write_renders(renders, Stage.PDS)
        self.begin_refinement(renders)
        last_step_of_view = {self.sdedit_view(step): step for step in range(start, start_step, self.config.sdedit_every)}
        for step in sorted(last_step_of_view.values()):
            self._replace_with_sdedit(step)
        return len(last_step_of_view)

    # -------------------------------------------------------------- renders

    @torch.no_grad()
    def render_training_views(self, stage: Stage) -> Float[Tensor, "num_images height width 3"]:
        """Renders every training view at training resolution, quantised to 8 bits as written under run_dir/renders/<stage>/."""
        cameras = self.datamanager.train_dataset.cameras.to(self.device)
        renders = []
        with get_progress(f"Rendering every training view at the end of stage {list(Stage).index(stage)}") as progress:
            for view in progress.track(range(self.datamanager.num_train_images)):
                renders.append(self.scene.render_still(cameras, view).clamp(0, 1).cpu())
        stacked = (torch.stack(renders) * 255).round() / 255  # what the PNGs hold, so a resumed run sees the same
        self._write_renders(stacked, stage)
        return stacked

    def _render_paths(self, run_dir: Path, stage: Stage) -> List[Path]:
        names = self.datamanager.train_dataparser_outputs.image_filenames
        return [run_dir / "renders" / stage.value / f"{Path(name).stem}.png" for name in names]

    def _write_renders(self, renders: Tensor, stage: Stage) -> None:
        if self.run_dir is not None:
            for image, path in zip(renders, self._render_paths(self.run_dir, stage)):
                save_png(image, path)

    def _read_renders(self, run_dir: Path, stage: Stage) -> Optional[Tensor]:
        paths = self._render_paths(run_dir, stage)
        if not all(path.is_file() for path in paths):
            return None
        arrays = [np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255 for path in paths]
        return torch.from_numpy(np.stack(arrays))

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(training_callback_attributes)
        if training_callback_attributes.trainer is not None:
            self.run_dir = Path(training_callback_attributes.trainer.base_dir)
        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._after_step))
        return callbacks

    def _after_step(self, step: int) -> None:
        if not self.schedule.is_last_step_of_stage(step):
            return
        stage = self.schedule.stage_at(step)
        renders = self.render_training_views(stage)
        if stage is Stage.PDS and self.schedule.refinement > 0:
            self.begin_refinement(renders)

