"""scripts/benchmark.py runs on CPU at tiny sizes and prints its table (numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_benchmark_prints_a_row_per_mode(user_env: dict[str, str], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "benchmark.py"), "--resolutions", "16", "--iterations", "1",
         "--warmup", "0", "--device", "cpu"],
        env=user_env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("GPU: "))
    assert "none (CPU" in lines[header] and "torch" in lines[header] and "nerfstudio 1.1.5" in lines[header]
    rows = [line.split() for line in lines[header + 2 : header + 4]]
    assert [row[:2] for row in rows] == [["16", "authors"], ["16", "ours"]]
    assert rows[0][5] == "1.00x" and rows[1][2] == "16384"  # speed-up against itself; the default chunk
    assert all(row[-2].endswith("h") and row[-3].endswith("x") for row in rows)  # stage 2 / nerfacto, whole edit
    assert [row[-1] for row in rows] == ["plain", "compile"]  # what computed the hash encodings


def test_offline_benchmark_refuses_a_folder_without_wheels(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "offline_benchmark.sh"), str(tmp_path / "missing")],
        cwd=REPO, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PDS_SITE": str(tmp_path / "site")},
    )  # fmt: skip
    assert result.returncode == 2 and "no wheels in" in result.stderr and result.stdout == ""
    assert not (tmp_path / "site").exists()
