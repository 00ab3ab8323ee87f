"""An edit never fails silently: non-finite steps are skipped (by nerfstudio's GradScaler under mixed precision,
by our guard without it) and a run of them stops the edit; a stalled edit is reported. nerfstudio's real
trainer step on CPU, with a CPU GradScaler where mixed precision is tested, on the stub scene kind (the guard and
the stall detector are the edit core's, the same for every kind)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from stub_scene import stub_trainer

from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.edit.stall import StallDetector
from pds_nerfstudio.edit.step_guard import GuardedOptimizers, NonFiniteGuard, NonFiniteTrainingError


def _snapshot(trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.pipeline.model.named_parameters()}


def _unchanged(trainer, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[name], p) for name, p in trainer.pipeline.model.named_parameters())


def _poison(trainer, monkeypatch: pytest.MonkeyPatch, bad_steps: set[int], value: float) -> None:
    """Multiplies the loss of `bad_steps` by `value` (inf: an overflow; nan: a broken loss)."""
    real = trainer.pipeline.get_train_loss_dict

    def poisoned(step: int):
        outputs, losses, metrics = real(step)
        if step in bad_steps:
            name = next(iter(losses))
            losses = {**losses, name: losses[name] * value}
        return outputs, losses, metrics

    monkeypatch.setattr(trainer.pipeline, "get_train_loss_dict", poisoned)


@pytest.fixture
def trainer(tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path):
    trainer = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, max_nonfinite_steps=3, pds_iterations=8)
    assert isinstance(trainer.optimizers, GuardedOptimizers)
    trainer.use_optimizers_of(Stage.PDS)  # what the first stage-1 step does
    return trainer


def test_under_mixed_precision_an_overflow_reaches_the_grad_scaler(trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    start = trainer.pipeline.schedule.start(Stage.PDS)
    _poison(trainer, monkeypatch, {start + 1}, float("inf"))
    trainer.train_iteration(start)
    scale = trainer.grad_scaler.get_scale()
    assert scale == 2.0**11  # a finite step: the scale grows (growth_interval 1)
    schedule = trainer.optimizers.schedulers["fields"].last_epoch
    before = _snapshot(trainer)
    trainer.train_iteration(start + 1)
    assert trainer.grad_scaler.get_scale() == scale / 2  # the scaler saw the overflow and backed off
    assert _unchanged(trainer, before)  # ... and skipped the step: the scene is untouched
    assert trainer.optimizers.schedulers["fields"].last_epoch == schedule  # nerfstudio skips the schedule too
    trainer.train_iteration(start + 2)
    assert not _unchanged(trainer, before) and trainer.nonfinite_guard.in_a_row == 0


def test_a_persistent_overflow_stops_the_run_with_the_message(trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    start = trainer.pipeline.schedule.start(Stage.PDS)
    _poison(trainer, monkeypatch, set(range(start, start + 8)), float("inf"))
    before = _snapshot(trainer)
    trainer.train_iteration(start)
    trainer.train_iteration(start + 1)
    assert _unchanged(trainer, before) and trainer.grad_scaler.get_scale() == 2.0**8
    with pytest.raises(SystemExit, match=r"3 iterations in a row up to step \d+ \(pds\) gave non-finite loss"):
        trainer.train_iteration(start + 2)
    assert _unchanged(trainer, before)


def test_without_a_scaler_non_finite_steps_are_skipped_and_counted(trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not trainer.grad_scaler.is_enabled()  # CPU, no mixed precision: nerfstudio's scaler is off
    start = trainer.pipeline.schedule.start(Stage.PDS)
    _poison(trainer, monkeypatch, {start, start + 1, start + 3, start + 4, start + 5}, float("nan"))
    before = _snapshot(trainer)
    for step in (start, start + 1):
        trainer.train_iteration(step)
        assert trainer.optimizers.skipped and _unchanged(trainer, before)
    trainer.train_iteration(start + 2)  # a finite step in between resets the count
    assert not trainer.optimizers.skipped and not _unchanged(trainer, before)
    trainer.train_iteration(start + 3)
    trainer.train_iteration(start + 4)
    with pytest.raises(SystemExit, match="3 iterations in a row .* gave non-finite losses"):
        trainer.train_iteration(start + 5)


def test_the_guard_counts_only_consecutive_bad_steps() -> None:
    guard = NonFiniteGuard(max_steps=2)
    assert guard.record(1, loss_finite=False, step_skipped=True, stage="pds")
    assert not guard.record(2, loss_finite=True, step_skipped=False, stage="pds")
    assert guard.record(3, loss_finite=True, step_skipped=True, stage="pds")
    with pytest.raises(NonFiniteTrainingError, match="2 iterations in a row up to step 4"):
        guard.record(4, loss_finite=True, step_skipped=True, stage="pds")


def test_the_stall_detector_warns_once_per_stall_with_causes_and_options() -> None:
    from pds_nerfstudio.scenes.nerfacto import NerfactoScene

    detector = StallDetector(intervals=2, learning_rate_options=NerfactoScene.learning_rate_options)
    assert detector.record(10, 1.0, None) is None
    assert detector.record(20, 0.0, 0.1) is None
    warning = detector.record(30, 0.0, 0.1)
    assert warning is not None and "from step 20 to step 30" in warning and "no guidance gradient" in warning
    for option in ("--pipeline.target-prompt", "--edit-optimizers.fields.optimizer.lr", "--pipeline.pds-loss-mult"):
        assert option in warning
    assert detector.record(40, 0.0, 0.1) is None  # said once
    assert detector.record(50, 1.0, 0.1) is None  # moving again
    assert detector.record(60, 1.0, 0.0) is None
    assert "render changed by at most 0.0e+00" in detector.record(70, 1.0, 0.0)


def test_a_splat_edit_is_advised_with_the_splats_own_options() -> None:
    from pds_nerfstudio.scenes.nerfacto import NerfactoScene
    from pds_nerfstudio.scenes.splatfacto import SplatfactoScene

    stall = StallDetector(intervals=1, learning_rate_options=SplatfactoScene.learning_rate_options).record(10, 0.0, None)
    guard = NonFiniteGuard(max_steps=1, learning_rate_options=SplatfactoScene.learning_rate_options)
    with pytest.raises(NonFiniteTrainingError) as raised:
        guard.record(10, loss_finite=False, step_skipped=True, stage="pds")
    for advice in (stall, str(raised.value)):
        assert "--edit-optimizers.features-dc.optimizer.lr" in advice and "--edit-optimizers.fields" not in advice
    assert "scene.render-chunk-size" in NerfactoScene.memory_options and "render-chunk-size" not in SplatfactoScene.memory_options
    assert "num-rays" not in SplatfactoScene.memory_options  # splats train on whole images


def test_a_guidance_that_never_reaches_the_scene_is_reported_as_a_stall(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    trainer = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, pds_iterations=4, log_every=1, stall_intervals=3,
                           pds_loss_mult=0.0)  # fmt: skip
    start = trainer.pipeline.schedule.start(Stage.PDS)
    for step in range(start, start + 2):
        trainer.train_iteration(step)
    assert not trainer.stall.warned  # two intervals: not yet
    for step in range(start + 2, start + 4):
        trainer.train_iteration(step)
    assert trainer.stall.warned
    output = capsys.readouterr().out
    assert "The edit is stalled" in output and "no guidance gradient reached" in output


def test_a_healthy_edit_is_not_reported(tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path) -> None:
    trainer = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, pds_iterations=4, log_every=1, stall_intervals=2)
    assert all(group["scheduler"].warmup_steps == 0 for group in trainer.config.edit_optimizers.values())  # full rate
    start = trainer.pipeline.schedule.start(Stage.PDS)
    for step in range(start, start + 4):
        trainer.train_iteration(step)
    assert trainer.stall.quiet == 0 and not trainer.stall.warned


def test_a_learning_rate_near_zero_is_reported_as_a_stall(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    trainer = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, pds_iterations=5, log_every=1, stall_intervals=3)
    for group in trainer.config.edit_optimizers.values():
        group["optimizer"].lr = 1e-30  # the authors' way of freezing their camera poses
    start = trainer.pipeline.schedule.start(Stage.PDS)
    for step in range(start, start + 5):
        trainer.train_iteration(step)
    assert trainer.stall.warned and "render changed by at most" in capsys.readouterr().out


def test_a_non_finite_sdedit_never_becomes_a_training_image(
    tiny_scene: Path, tiny_prior_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import tiny_pds_config

    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir).setup(device="cpu", test_mode="val")
    start = pipeline.schedule.start(Stage.REFINEMENT)
    prior = pipeline.prior()
    monkeypatch.setattr(prior, "decode", lambda latents, **_: torch.full((1, 3, 64, 64), float("nan")))
    pipeline.get_train_loss_dict(start)  # stage 2 begins: the stage-1 renders, then an SDEdit that overflowed
    view = pipeline.refinement.sdedit_view(start)
    assert torch.equal(pipeline.datamanager.current_image(view), pipeline.refinement.stage1_renders[view])
