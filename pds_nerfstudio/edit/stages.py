"""Which stage a global training step belongs to: a pure function of the step and the stage lengths.

Steps [0, R) reconstruct the scene (stage 0, skipped when a starting checkpoint is loaded: the
run then starts at step R), [R, R + P) run PDS (stage 1), [R + P, R + P + F) refine (stage 2).
A resumed run therefore continues in the right stage with no state of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

STAGE_LENGTHS_KEY = "edit_stage_lengths"
"""The pipeline-state entry (a buffer of the lengths R, P, F) that an edit's checkpoints hold and a
reconstruction's do not: it is how a checkpoint is known to be an edit's."""


STAGE_RUN_LENGTHS_KEY = "edit_stage_run_lengths"
"""The pipeline-state entry of the lengths the stages run: the caps R, P, F, less where a stage ended early
because it had converged (`--pipeline.stop-when-converged`)."""


def stored_stage_lengths(pipeline_state: Mapping[str, Any]) -> list[int] | None:
    """The stage lengths an edit's checkpoint was written with (the options, caps when stages end on
    convergence); None for any other checkpoint."""
    lengths = pipeline_state.get(STAGE_LENGTHS_KEY)
    return None if lengths is None else [int(n) for n in lengths.tolist()]


def stored_run_lengths(pipeline_state: Mapping[str, Any]) -> list[int] | None:
    """The lengths the stages of an edit's checkpoint run (shorter than the options where a stage ended on
    convergence); None for any other checkpoint."""
    lengths = pipeline_state.get(STAGE_RUN_LENGTHS_KEY)
    return stored_stage_lengths(pipeline_state) if lengths is None else [int(n) for n in lengths.tolist()]


def is_finished_edit(pipeline_state: Mapping[str, Any], step: int) -> bool:
    """Whether a checkpoint at `step` with this pipeline state is the last step of its edit."""
    lengths = stored_run_lengths(pipeline_state)
    return lengths is not None and step + 1 >= sum(lengths)


class Stage(str, Enum):
    """The stages of an edit, named as they appear in logs, folders and the viewer."""

    RECONSTRUCTION = "reconstruction"
    PDS = "pds"
    REFINEMENT = "refinement"
    DONE = "done"


@dataclass(frozen=True)
class StageSchedule:
    """Lengths of the three stages, in iterations."""

    reconstruction: int
    pds: int
    refinement: int

    def __post_init__(self) -> None:
        for name in ("reconstruction", "pds", "refinement"):
            if getattr(self, name) < 0:
                raise ValueError(f"--pipeline.{name}-iterations must be >= 0, got {getattr(self, name)}")

    @property
    def total(self) -> int:
        """Global step at which the edit is complete."""
        return self.reconstruction + self.pds + self.refinement

    def start(self, stage: Stage) -> int:
        """First global step of `stage`."""
        return {
            Stage.RECONSTRUCTION: 0,
            Stage.PDS: self.reconstruction,
            Stage.REFINEMENT: self.reconstruction + self.pds,
            Stage.DONE: self.total,
        }[stage]

    def length(self, stage: Stage) -> int:
        """Iterations of `stage`."""
        lengths = {Stage.RECONSTRUCTION: self.reconstruction, Stage.PDS: self.pds, Stage.REFINEMENT: self.refinement}
        return lengths[stage]

    def ended_at(self, stage: Stage, step: int) -> StageSchedule:
        """This schedule with `stage` ending at global step `step` (its last iteration), the later stages after it."""
        length = step - self.start(stage) + 1
        if stage is Stage.PDS:
            return StageSchedule(self.reconstruction, length, self.refinement)
        if stage is Stage.REFINEMENT:
            return StageSchedule(self.reconstruction, self.pds, length)
        raise ValueError(f"stage {stage.value} does not end early")

    def stage_at(self, step: int) -> Stage:
        """The stage that global step `step` runs."""
        if step < self.start(Stage.PDS):
            return Stage.RECONSTRUCTION
        if step < self.start(Stage.REFINEMENT):
            return Stage.PDS
        if step < self.total:
            return Stage.REFINEMENT
        return Stage.DONE

    def is_last_step_of_stage(self, step: int) -> bool:
        """Whether `step` is the final iteration of a non-empty stage."""
        return step + 1 in (self.start(Stage.PDS), self.start(Stage.REFINEMENT), self.total) and step >= 0
