"""nerfstudio's Trainer, with the global step horizon and checkpoint loading that an edit needs.

- The run ends at the global step where the last stage ends, whatever step it starts at
  (nerfstudio 1.1.5 runs `--max-num-iterations` more steps after a loaded checkpoint).
- nerfstudio's progress column (step, percent, ETA) counts toward that global step.
- A checkpoint is saved at the end of every stage, so that each stage's result can be loaded.
- Each edit stage starts with fresh optimisers (`edit_optimizers`) and frozen camera poses.
- A checkpoint of another method (the scene kind's stock method, or our reconstruction) is a starting
  scene: its model weights load, its optimiser state is ignored, and the run starts where
  stage 1 starts, skipping reconstruction. A `pds` checkpoint resumes exactly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Type

import torch

from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.utils import writer
from nerfstudio.utils.decorators import check_main_thread
from nerfstudio.utils.rich_utils import CONSOLE

from pds_nerfstudio.edit.pipeline import EditPipeline
from pds_nerfstudio.edit.region_store import EditRegionError
from pds_nerfstudio.prior.stable_diffusion import PriorLoadError
from pds_nerfstudio.edit.stages import Stage, is_finished_edit, stored_run_lengths, stored_stage_lengths
from pds_nerfstudio.edit.stall import StallDetector
from pds_nerfstudio.edit.step_guard import GuardedOptimizers, NonFiniteGuard, NonFiniteTrainingError

def validate_learning_rates(optimizers: Dict[str, Any], option: str) -> None:
    """Refuses a learning rate that is not a positive number: nerfstudio 1.1.5's exponential schedule divides by
    it (a rate of 0 turns every parameter into NaN at the first step)."""
    for group, entry in optimizers.items():
        flag = f"{option}.{group.replace('_', '-')}"
        rates = [("optimizer.lr", entry["optimizer"].lr)]
        if entry.get("scheduler") is not None and getattr(entry["scheduler"], "lr_final", None) is not None:
            rates.append(("scheduler.lr-final", entry["scheduler"].lr_final))
        for name, rate in rates:
            if not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"{flag}.{name} must be a number > 0, got {rate} (to slow a group down, use a tiny rate)")


@dataclass
class PDSTrainerConfig(TrainerConfig):
    """Trainer of the `pds` method; `--max-num-iterations` is replaced by the sum of the stage lengths."""

    _target: Type = field(default_factory=lambda: PDSTrainer)
    edit_optimizers: Dict[str, Any] = field(default_factory=dict)
    """Optimisers and schedules of the edit stages (1 and 2), started afresh (new Adam state, the schedule
    from its first step) where each of those stages starts, as the authors' separate PDS and refinement runs
    do (`load_scheduler=False`). Parameter groups without an entry here (the camera optimiser's) are frozen
    during the edit. Empty: the scene kind's own (`SceneAdapter.edit_optimizers`). `--optimizers` applies to
    the reconstruction (stage 0)."""
    edit_mixed_precision: bool = False
    """Mixed precision in the edit stages (the authors' edit runs use none; `--mixed-precision` applies to the
    reconstruction)."""

    def __post_init__(self) -> None:
        scene_kind = getattr(self.pipeline, "scene_kind", None)
        if not self.edit_optimizers and scene_kind is not None:
            self.edit_optimizers = scene_kind.edit_optimizers()

    def save_config(self) -> None:
        """Refuses bad options and an occupied run folder before anything is written, then saves config.yml."""
        try:
            self.pipeline.validate()
            validate_learning_rates(self.optimizers, "--optimizers")
            validate_learning_rates(self.edit_optimizers, "--edit-optimizers")
        except ValueError as error:
            raise SystemExit(f"error: {error}") from None
        base_dir = self.get_base_dir()
        if base_dir.exists() and any(base_dir.iterdir()):
            raise SystemExit(
                f"error: run folder {base_dir} already holds a run; leave --timestamp at its default "
                "or choose another, so that runs never share a folder"
            )
        self.prepare_from_checkpoint()
        super().save_config()

    def checkpoint_path(self) -> Optional[Path]:
        """The checkpoint that `--load-dir`/`--load-step` or `--load-checkpoint` name, or None."""
        if self.load_checkpoint is not None:
            path = Path(self.load_checkpoint)
            if not path.is_file():
                raise SystemExit(f"error: --load-checkpoint {path} does not exist")
            return path
        if self.load_dir is None:
            return None
        load_dir = Path(self.load_dir)
        steps = sorted(int(p.stem.split("-")[1]) for p in load_dir.glob("step-*.ckpt")) if load_dir.is_dir() else []
        if not steps:
            raise SystemExit(
                f"error: --load-dir {load_dir} holds no checkpoint (step-*.ckpt); "
                "pass the run's nerfstudio_models folder"
            )
        step = self.load_step if self.load_step is not None else steps[-1]
        path = load_dir / f"step-{step:09d}.ckpt"
        if not path.is_file():
            raise SystemExit(f"error: --load-step {step}: {path} does not exist (found steps {steps})")
        return path

    def prepare_from_checkpoint(self) -> None:
        """Checks a resumed edit against its checkpoint and fits the model options to a starting scene, before
        anything is written (see :meth:`_check_resume` and :meth:`_adopt_starting_scene`)."""
        path = self.checkpoint_path()
        if path is None:
            return
        state = torch.load(path, map_location="cpu", mmap=True)  # mapped: only a few entries are read
        pipeline_state = state.get("pipeline", {})
        stored = stored_stage_lengths(pipeline_state)
        if stored is not None:
            self._check_resume(path, int(state["step"]), stored, pipeline_state)
        self._adopt_starting_scene(path, pipeline_state)

    def _check_resume(self, path: Path, step: int, stored: List[int], pipeline_state: Dict[str, Any]) -> None:
        """A resumed edit keeps its stage lengths (the stage of a step, and the stage-2 images replayed on resume,
        depend on them), and a finished edit has nothing to resume."""
        given = [self.pipeline.reconstruction_iterations, self.pipeline.pds_iterations, self.pipeline.refinement_iterations]
        if given != stored:
            raise SystemExit(
                f"error: {path} belongs to an edit with stage lengths {' + '.join(map(str, stored))} (reconstruction + "
                f"PDS + refinement iterations), this run asks for {' + '.join(map(str, given))}: resume with the same "
                "--pipeline.reconstruction-iterations, --pipeline.pds-iterations and --pipeline.refinement-iterations "
                "(the stage of every step, and the stage-2 images rebuilt on resume, depend on them)"
            )
        if is_finished_edit(pipeline_state, step):
            run, total = path.parent.parent, sum(stored_run_lengths(pipeline_state) or stored)
            CONSOLE.print(
                f"The edit of {run} is finished: its checkpoint is at step {step}, the last of its {total} steps. "
                f"Nothing to resume; render it with ns-render interpolate --load-config {run / 'config.yml'}"
            )
            raise SystemExit(0)

    def _adopt_starting_scene(self, path: Path, pipeline_state: Dict[str, Any]) -> None:
        """The scene kind fits its model options to a starting checkpoint of another method (its appearance
        codes, say), before config.yml is written, so that `ns-render` builds the same model."""
        scene_kind = getattr(self.pipeline, "scene_kind", None)
        message = scene_kind.adopt_starting_checkpoint(self.pipeline.model, pipeline_state) if scene_kind else None
        if message is not None:
            CONSOLE.print(f"{path} {message}")


class PDSTrainer(Trainer):
    """Trains the stages of an edit up to the global step where the last one ends."""

    pipeline: EditPipeline

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        self.config.prepare_from_checkpoint()  # as save_config does, for trainers set up without it
        self._optimizer_stage = Stage.RECONSTRUCTION  # Trainer.setup builds the optimisers of `--optimizers`
        try:
            super().setup(test_mode)
            learning_rates = self.pipeline.scene.learning_rate_options  # the advice names this scene kind's options
            self.nonfinite_guard = NonFiniteGuard(self.config.pipeline.max_nonfinite_steps, learning_rates)
            self.stall = StallDetector(self.config.pipeline.stall_intervals, learning_rates)
            schedule = self.pipeline.schedule
            # nerfstudio 1.1.5's progress printer divides the global step by max_num_iterations, which counts
            # from the loaded step ("1190 (396.67%)" and a wrong ETA on a resumed edit): give it the last step.
            if "max_iter" in writer.GLOBAL_BUFFER:
                writer.GLOBAL_BUFFER["max_iter"] = schedule.total
            if self._start_step < schedule.total and schedule.total > schedule.start(Stage.PDS):
                self.pipeline.prior()  # fail now, not after hours of reconstruction
        except (ValueError, PriorLoadError) as error:
            raise SystemExit(f"error: {error}") from None

    def _load_checkpoint(self) -> None:
        self.pipeline.run_dir = self.base_dir
        path = self.config.checkpoint_path()
        if path is not None:
            state = torch.load(path, map_location="cpu", mmap=True)  # mapped: reading which method wrote it is cheap
            if stored_stage_lengths(state.get("pipeline", {})) is not None:
                self._resume(path)
                restored = self.pipeline.restore_edits(self._start_step, previous_run=path.parent.parent)
                stage = self.pipeline.schedule.stage_at(self._start_step)
                CONSOLE.print(f"Resuming the edit at step {self._start_step} ({stage.value}); {restored} edited images restored")
            else:
                self._load_starting_scene(state, path)
        else:
            super()._load_checkpoint()
        self.config.max_num_iterations = max(0, self.pipeline.schedule.total - self._start_step)

    def _resume(self, path: Path) -> None:
        """nerfstudio's checkpoint loading, but the optimisers are built after the scene's state has loaded (a
        splatfacto scene replaces its parameters to the checkpoint's number of Gaussians) and are those of the
        stage of the checkpoint's step, whose state the checkpoint holds."""
        # Copied from nerfstudio 1.1.5 nerfstudio/engine/trainer.py:Trainer._load_checkpoint, with
        # use_optimizers_of between the pipeline's state and the optimisers'.
        state = torch.load(path, map_location="cpu")
        self._start_step = state["step"] + 1
        self.pipeline.load_pipeline(state["pipeline"], state["step"])
        self.use_optimizers_of(self.pipeline.schedule.stage_at(int(state["step"])))
        self.optimizers.load_optimizers(state["optimizers"])
        if "schedulers" in state and self.config.load_scheduler:
            self.optimizers.load_schedulers(state["schedulers"])
        self.grad_scaler.load_state_dict(state["scalers"])
        CONSOLE.print(f"Done loading Nerfstudio checkpoint from {path}")

    def setup_optimizers(self) -> GuardedOptimizers:
        """nerfstudio's optimisers, guarded against non-finite steps (:mod:`pds_nerfstudio.edit.step_guard`)."""
        return GuardedOptimizers(self.config.optimizers.copy(), self.pipeline.get_param_groups())

    def use_optimizers_of(self, stage: Stage) -> None:
        """Optimisers, schedules, frozen parameters and precision of `stage`, started afresh.

        The Optimizers object is re-initialised in place, and so are its dicts: training callbacks hold the object,
        and nerfstudio 1.1.5's splatfacto densifies with the `optimizers` dict its BEFORE_TRAIN_ITERATION callback
        took, before this switch on a stage's first step.
        """
        if stage is Stage.RECONSTRUCTION:
            config, self.mixed_precision = self.config.optimizers, self.config.mixed_precision
        else:
            self.pipeline.freeze_for_edit()
            config, self.mixed_precision = self.config.edit_optimizers, self.config.edit_mixed_precision
        groups = {}
        for name, parameters in self.pipeline.get_param_groups().items():
            if name not in config:  # not trained in this stage
                for parameter in parameters:
                    parameter.requires_grad_(False)
                    parameter.grad = None
            trainable = [parameter for parameter in parameters if parameter.requires_grad]
            if trainable:
                groups[name] = trainable
        held = self.optimizers.optimizers, self.optimizers.schedulers
        self.optimizers.__init__(dict(config), groups)  # type: ignore[misc]
        for kept, fresh in zip(held, (self.optimizers.optimizers, self.optimizers.schedulers)):
            kept.clear()
            kept.update(fresh)
        self.optimizers.optimizers, self.optimizers.schedulers = held
        self._optimizer_stage = stage

    def train_iteration(self, step: int):
        stage = self.pipeline.schedule.stage_at(step)
        if stage is not getattr(self, "_optimizer_stage", Stage.RECONSTRUCTION) and stage is not Stage.DONE:
            self.use_optimizers_of(stage)
        scale = self.grad_scaler.get_scale() if self.grad_scaler.is_enabled() else None
        try:
            result = super().train_iteration(step)
            overflow = scale is not None and self.grad_scaler.get_scale() < scale  # the scaler skipped the step
            loss_finite = bool(torch.isfinite(result[0]).all())
            if self.nonfinite_guard.record(step, loss_finite, overflow or self.optimizers.skipped, stage.value):
                if not overflow or self.nonfinite_guard.in_a_row > 1:  # a lone overflow is the scaler's routine
                    CONSOLE.print(f"[bold yellow]Step {step}: non-finite {'gradients' if loss_finite else 'loss'}; "
                                  "the step was skipped, the scene is unchanged")  # fmt: skip
            if self.pipeline.pds.is_log_step(step):
                warning = self.stall.record(step, self.pipeline.gradient_norm(), self.pipeline.pds.probe_change())
                if warning is not None:
                    CONSOLE.print(f"[bold yellow]{warning}")
        except torch.cuda.OutOfMemoryError:
            raise SystemExit(
                f"error: out of GPU memory at step {step} ({self.pipeline.schedule.stage_at(step).value}). "
                f"To use less: {self.pipeline.scene.memory_options}. The last checkpoint is intact: "
                "resume with --load-dir"
            ) from None
        except (NonFiniteTrainingError, EditRegionError) as error:
            raise SystemExit(f"error: {error}") from None
        ended = self.pipeline.end_stage_if_converged(step, result[0])
        if ended is not None:
            CONSOLE.print(f"[bold]{ended}")
            if "max_iter" in writer.GLOBAL_BUFFER:  # the progress column counts to the edit's new end
                writer.GLOBAL_BUFFER["max_iter"] = self.pipeline.schedule.total
        if self.pipeline.schedule.is_last_step_of_stage(step) and step + 1 < self.pipeline.schedule.total:
            self.save_checkpoint(step)  # each stage's result stays loadable (`--load-step`); the last is saved anyway
        if step + 1 >= self.pipeline.schedule.total:
            self.stop_training = True  # the edit ended before the iterations nerfstudio's loop was given
        return result

    def _after_train(self) -> None:
        # nerfstudio 1.1.5's loop sets self.step to the next step before it sees stop_training: the final
        # checkpoint is the last step trained
        self.step = min(self.step, self.pipeline.schedule.total - 1)
        super()._after_train()

    @check_main_thread
    def save_checkpoint(self, step: int) -> None:
        """nerfstudio's checkpoint, written atomically: a kill during a save leaves the previous one usable.
        `--save-only-latest-checkpoint` keeps the checkpoints of the stages' ends too."""
        # Copied from nerfstudio 1.1.5 nerfstudio/engine/trainer.py:Trainer.save_checkpoint, with the save to a
        # partial file renamed into place, and the stages' ends kept.
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.ckpt"
        # Beside the folder, not in it: nerfstudio parses every name in it as a step number.
        partial = self.checkpoint_dir.parent / f".{path.name}.partial"
        torch.save(
            {
                "step": step,
                "pipeline": self.pipeline.state_dict(),
                "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
                "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
                "scalers": self.grad_scaler.state_dict(),
            },
            partial,
        )
        os.replace(partial, path)
        if self.config.save_only_latest_checkpoint:  # nerfstudio's default: keeps the latest and each stage's end
            for older in self.checkpoint_dir.glob("step-*.ckpt"):
                if older != path and not self.pipeline.schedule.is_last_step_of_stage(int(older.stem.split("-")[1])):
                    older.unlink()

    def _load_starting_scene(self, state: Dict[str, Any], path: Path) -> None:
        """Loads a scene trained by another method; the edit starts where stage 1 starts."""
        pipeline_state = state.get("pipeline", {})
        problem = self.pipeline.scene.starting_scene_problem(pipeline_state)
        if problem is not None or "step" not in state:
            raise SystemExit(f"error: {path} cannot start this edit: {problem or 'it has no step'}")
        try:
            self.pipeline.load_pipeline(dict(pipeline_state), state["step"])
        except RuntimeError as error:
            raise SystemExit(
                f"error: {path} does not fit this model ({str(error).splitlines()[0]}); "
                "use the same --pipeline.model.* options as the run that wrote it"
            ) from None
        self._start_step = self.pipeline.schedule.start(Stage.PDS)
        CONSOLE.print(
            f"Loaded the scene from {path} (step {state['step']} of another method; its optimiser state is not used). "
            f"Reconstruction skipped: the edit starts at step {self._start_step}."
        )

