"""The convergence detectors of `--pipeline.stop-when-converged` (pds_nerfstudio/edit/convergence.py), held to
their formulas on renders and losses whose answer is known."""

import pytest
import torch

from pds_nerfstudio.edit.convergence import LossPlateau, RenderConvergence


def renders(value: float) -> torch.Tensor:
    return torch.full((3, 4, 4, 3), value)


def test_unsmoothed_ratio_is_the_step_change_over_the_change_since_the_first_check():
    detector = RenderConvergence(threshold=0.5, patience=1, min_iterations=0)
    assert detector.record(10, renders(0.0)) is None and detector.ratio is None
    detector.record(20, renders(0.4))
    assert detector.ratio == pytest.approx(1.0)
    detector.record(30, renders(0.5))  # moved 0.1 of a total 0.5
    assert detector.ratio == pytest.approx(0.2)


def test_smoothed_ratio_follows_the_moving_average():
    detector = RenderConvergence(threshold=1e-9, patience=1, min_iterations=0, smoothing=0.5)
    detector.record(10, renders(0.0))
    detector.record(20, renders(1.0))  # s = 0.5: moved 0.5 of 0.5
    assert detector.ratio == pytest.approx(1.0)
    detector.record(30, renders(1.0))  # s = 0.75: moved 0.25 of 0.75
    assert detector.ratio == pytest.approx(1 / 3)


def test_smoothing_damps_jitter_about_a_reached_edit():
    generator = torch.Generator().manual_seed(0)
    sequence = [renders(0.0)] + [renders(1.0) + 0.3 * torch.randn(3, 4, 4, 3, generator=generator) for _ in range(12)]
    ratios = {}
    for smoothing in (0.0, 0.7):
        detector = RenderConvergence(threshold=1e-9, patience=1, min_iterations=0, smoothing=smoothing)
        for step, render in enumerate(sequence):
            detector.record(step, render)
        ratios[smoothing] = detector.ratio
    assert ratios[0.7] < 0.5 * ratios[0.0]


def test_ends_after_patience_calm_windows_and_the_minimum():
    detector = RenderConvergence(threshold=0.1, patience=2, min_iterations=50)
    values = [0.0, 0.5, 0.9, 0.95, 0.96, 0.965, 0.966, 0.9661]
    ends = [detector.record(10 * (i + 1), renders(v)) for i, v in enumerate(values)]
    # calm from the 4th check (0.05/0.95) on; two in a row at the 5th (iteration 50, the minimum)
    assert ends[:4] == [None] * 4
    assert ends[4] is not None and "converged" in ends[4] and "2 windows in a row" in ends[4]


def test_a_change_that_keeps_its_pace_never_ends():
    # each window adds 10% to the change so far: the ratio stays near 0.1 / 1.1, above the threshold
    detector = RenderConvergence(threshold=0.05, patience=2, min_iterations=0, smoothing=0.7)
    assert all(detector.record(10 * i, renders(0.01 * 1.1**i)) is None for i in range(1, 60))


def test_state_round_trip_continues_identically():
    sequence = [renders(v) for v in (0.0, 0.5, 0.9, 0.95, 0.96, 0.965, 0.966, 0.9661, 0.96612)]
    whole = RenderConvergence(threshold=0.1, patience=3, min_iterations=0, smoothing=0.7)
    ends = [whole.record(i, render) for i, render in enumerate(sequence)]
    first = RenderConvergence(threshold=0.1, patience=3, min_iterations=0, smoothing=0.7)
    for i, render in enumerate(sequence[:4]):
        first.record(i, render)
    resumed = RenderConvergence(threshold=0.1, patience=3, min_iterations=0, smoothing=0.7)
    resumed.load(first.state())
    assert [resumed.record(i, render) for i, render in enumerate(sequence) if i >= 4] == ends[4:]


def test_smoothing_out_of_range_is_refused_as_the_command_line_spells_it(tiny_scene, tiny_prior_dir):
    from conftest import tiny_pds_config

    with pytest.raises(ValueError, match=r"--pipeline\.convergence-smoothing must be in \[0, 1\), got 1\.0"):
        tiny_pds_config(tiny_scene, tiny_prior_dir, convergence_smoothing=1.0).validate()


def test_loss_plateau_compares_window_means():
    plateau = LossPlateau(threshold=0.1, patience=2)
    for window, (value, ends) in enumerate([(1.0, False), (0.5, False), (0.48, False), (0.47, True)]):
        for _ in range(3):
            plateau.add(torch.tensor(value))
        reason = plateau.record(iterations=10 * (window + 1), min_iterations=0)
        assert (reason is not None) == ends
    assert plateau.ratio == pytest.approx(0.01 / 0.48)


def test_loss_plateau_waits_for_every_view():
    plateau = LossPlateau(threshold=0.5, patience=1)
    for window in range(1, 4):
        plateau.add(torch.tensor(1.0))
        reason = plateau.record(iterations=10 * window, min_iterations=30)
        assert (reason is not None) == (window == 3)
