"""scripts/benchmark.py runs on CPU at tiny sizes and prints its report (numbers are not asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import waiting

from pds_nerfstudio.measure import speed as benchmark

REPO = Path(__file__).resolve().parents[1]


def _benchmark(args: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    result = waiting.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--iterations", "1", "--warmup", "0", "--device", "cpu",
         *args, *([] if "--resolutions" in args else ["--resolutions", "16"])], env, cwd,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("GPU: ")) :]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def _ms(cell: str) -> float:
    number, unit = cell.split()
    return float(number) * {"h": 3.6e6, "min": 6e4, "s": 1e3}[unit]


def test_benchmark_reports_stage1_rows_and_each_modes_costs(user_env: dict[str, str], tmp_path: Path) -> None:
    converged = tmp_path / "converged-run"  # an edit whose stages ended early, as `ns-train pds` writes it
    converged.mkdir()
    (converged / "stage_ends.json").write_text(json.dumps({
        "pds": {"last_step": 679, "iterations": 80, "cap": 200, "reason": "converged"},
        "refinement": {"last_step": 889, "iterations": 210, "cap": 210, "reason": "reached its cap"}}))  # fmt: skip
    report = _benchmark(["--output", str(tmp_path / "report.md"), "--profile", "--project-run", str(converged)],
                        user_env, tmp_path)  # fmt: skip
    assert "none (CPU" in report[0] and "torch" in report[0] and "nerfstudio 1.1.5" in report[0]
    assert _cells(report[3])[7:] == ["whole edit, 30,000 + 15,000", "whole edit, 80 + 210"]
    stage1 = [_cells(line) for line in report[5:7]]
    assert [row[:3] for row in stage1] == [["16", "authors", "16384"], ["16", "ours", "16384"]]  # the default chunk
    assert stage1[0][6] == "1.00x" and stage1[1][6].endswith("x")  # speed-up against the baseline
    modes = [_cells(line) for line in report[10:12]]
    assert [row[0] for row in modes] == ["authors", "ours"] and all(row[4].endswith("x") for row in modes)
    for row, mode in zip(stage1, modes):  # whole edit = N1 x this row's stage 1 + N2 x this mode's stage 2
        for cell, (n1, n2) in zip(row[7:], ((30000, 15000), (80, 210))):
            assert _ms(cell) == pytest.approx(n1 * float(row[3]) + n2 * float(mode[2]), rel=0.01, abs=3100)  # to the printed digits
    assert "converged-run's 80 + 210" in report[12]
    assert [row[5] for row in modes] == ["plain", "compile"]  # what computed the hash encodings
    assert (tmp_path / "report.md").read_text().splitlines() == report  # the file holds the printed report
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [row["status"] for row in saved["stage1"] + saved["modes"]] == ["ok"] * 4
    assert not list(tmp_path.glob("*.partial"))
    for mode in ("authors", "ours"):  # torch.profiler's operator table of one stage-1 iteration, with our two ranges
        profile = (tmp_path / f"report-profile-{mode}.txt").read_text()
        assert "pds: render forward" in profile and "pds: diffusion half forward" in profile and "aten::" in profile


def test_past_the_time_budget_nothing_is_measured_and_the_report_says_so(
    tiny_prior_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # in-process: no pipeline is built, so no import time to pay again
    args = ["--resolutions", "16", "--device", "cpu", "--time-budget", "0", "--render-chunk-sizes", "0", "4096",
            "--prior", str(tiny_prior_dir)]  # fmt: skip
    assert benchmark.main([*args, "--output", str(tmp_path / "report.md")]) == 0
    report = capsys.readouterr().out.splitlines()
    report = report[next(i for i, line in enumerate(report) if line.startswith("GPU: ")) :]
    rows = [_cells(line) for line in report[5:8]]
    assert [row[:4] for row in rows] == [
        ["16", "authors", "16384", "skipped (time budget)"],
        ["16", "ours", "16384", "skipped (time budget)"],
        ["16", "ours", "4096", "skipped (time budget)"],
    ]
    assert all("skipped (time budget)" in line for line in report[11:13])
    assert (tmp_path / "report.md").read_text().splitlines() == report


def test_a_run_that_does_not_say_where_its_stages_ended_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(["--device", "cpu", "--project-run", str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: --project-run:" in error and "stage_ends.json" in error and "finished both stages" in error


def test_offline_benchmark_refuses_a_folder_without_wheels(tmp_path: Path) -> None:
    result = waiting.run(
        ["bash", str(REPO / "scripts" / "offline_benchmark.sh"), str(tmp_path / "missing")],
        cwd=REPO, env={"PATH": "/usr/bin:/bin", "PDS_SITE": str(tmp_path / "site")},
    )  # fmt: skip
    assert result.returncode == 2 and "no wheels in" in result.stderr and result.stdout == ""
    assert not (tmp_path / "site").exists()


def test_benchmark_measures_the_splat_edit_on_cpu(user_env: dict[str, str], tmp_path: Path) -> None:
    report = _benchmark(["--modes", "splat", "authors", "--resolutions", "32"], user_env, tmp_path)
    stage1 = {row[1]: row for row in (_cells(line) for line in report[5:7])}
    assert stage1["splat"][:3] == ["32", "splat", "-"] and float(stage1["splat"][3]) > 0  # one rasterisation, no chunks
    modes = {row[0]: row for row in (_cells(line) for line in report[10:12])}
    assert float(modes["splat"][3]) > 0 and modes["splat"][5] == "none"  # splatfacto's own step; no hash grid


def test_a_mode_that_cannot_run_is_reported_and_the_others_are_measured(
    tiny_prior_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = benchmark.build

    def build(scene, prior, device, mode, tiny):
        if mode == "splat":
            raise RuntimeError("gsplat could not compile its CUDA kernels")
        return real_build(scene, prior, device, mode, tiny)

    monkeypatch.setattr(benchmark, "build", build)
    args = ["--resolutions", "16", "--device", "cpu", "--iterations", "1", "--warmup", "0", "--modes", "splat", "ours",
            "--prior", str(tiny_prior_dir)]  # fmt: skip
    assert benchmark.main(args) == 0
    report = capsys.readouterr().out.splitlines()
    report = report[next(i for i, line in enumerate(report) if line.startswith("GPU: ")) :]
    rows = {row[1]: row for row in (_cells(line) for line in report[5:7])}
    assert rows["splat"][3] == "failed (RuntimeError: gsplat could not compile its CUDA kernels)"
    assert float(rows["ours"][3]) > 0
