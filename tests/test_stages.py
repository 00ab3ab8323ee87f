"""The stage of a global step is a pure function of the step and the stage lengths."""

from __future__ import annotations

import pytest

from pds_nerfstudio.edit.stages import Stage, StageSchedule


def test_stage_boundaries() -> None:
    schedule = StageSchedule(reconstruction=3, pds=4, refinement=5)
    stages = [schedule.stage_at(step) for step in range(13)]
    assert stages == [Stage.RECONSTRUCTION] * 3 + [Stage.PDS] * 4 + [Stage.REFINEMENT] * 5 + [Stage.DONE]
    assert schedule.total == 12
    assert [step for step in range(12) if schedule.is_last_step_of_stage(step)] == [2, 6, 11]


def test_empty_stages_are_skipped() -> None:
    schedule = StageSchedule(reconstruction=0, pds=2, refinement=0)
    assert [schedule.stage_at(step) for step in range(3)] == [Stage.PDS, Stage.PDS, Stage.DONE]
    assert [step for step in range(2) if schedule.is_last_step_of_stage(step)] == [1]


def test_negative_lengths_are_refused_naming_the_option() -> None:
    with pytest.raises(ValueError, match="--pipeline.pds-iterations"):
        StageSchedule(reconstruction=1, pds=-1, refinement=1)
