"""scripts/edit_check.py (the GPU run's end-to-end check) on CPU: a tiny edit through every stage, then ns-render."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import waiting
from conftest import folder_snapshot

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--pipeline.datamanager.train-num-rays-per-batch", "256", "--pipeline.model.hidden-dim", "16",
         "--pipeline.model.hidden-dim-color", "16", "--pipeline.model.num-levels", "4",
         "--pipeline.model.num-nerf-samples-per-ray", "16", "--pipeline.model.num-proposal-samples-per-ray", "16", "8",
         "--pipeline.model.log2-hashmap-size", "12", "--pipeline.model.eval-num-rays-per-chunk", "1024"]  # fmt: skip
"""Test sizes (as test_ns_commands.TINY_NERFACTO): the script's checks are of a user's path, not of the edit."""


def _edit_check(out: Path, scene: Path, prior: Path, env: dict[str, str], *options: str,
                methods: tuple[str, ...] = ("pds",)) -> subprocess.CompletedProcess:  # fmt: skip
    command = [sys.executable, str(REPO / "scripts" / "edit_check.py"), str(out), "--scene", str(scene),
               "--prior", str(prior), "--iterations", "6", "3", "6", "--methods", *methods,
               "--splat-options=--pipeline.model.num-downscales 0", "--options", *SMALL, *options]  # fmt: skip
    return waiting.run(command, env, out.parent)


def _rows(report: str) -> dict[str, list[str]]:
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in report.splitlines() if line.startswith("| ")]
    return {row[0]: row[1:] for row in rows[1:]}


def test_a_short_edit_passes_every_check(tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    before = folder_snapshot(tiny_scene)
    result = _edit_check(tmp_path / "check", tiny_scene, tiny_prior_dir, user_env, methods=("pds", "pds-splat"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = _rows((tmp_path / "check" / "edit_check.md").read_text())
    training = rows["ns-train pds, 6 + 3 + 6 iterations"]
    assert training[1] == "yes" and training[2] == "checkpoints at steps 5, 8, 14; 0 non-finite steps"
    assert rows["ns-render dataset --split test (pds)"][1] == "yes"
    assert rows["ns-render dataset --split test (pds)"][2].startswith("1 held-out frames, sizes [(32, 32)]")
    assert "$ ns-train pds --data" in result.stdout  # the user's command
    splats = rows["ns-train pds-splat, 6 + 3 + 6 iterations"]  # the same for Gaussian splats
    assert splats[1] == "yes" and splats[2] == "checkpoints at steps 5, 8, 14; 0 non-finite steps"
    splat_frames = rows["ns-render dataset --split test (pds-splat)"]
    assert splat_frames[1] == "yes" and splat_frames[2].startswith("1 held-out frames, sizes [(32, 32)]")
    assert "$ ns-train pds-splat --data" in result.stdout
    assert folder_snapshot(tiny_scene) == before  # the scene is only read


def test_a_failing_step_fails_the_check(tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    result = _edit_check(tmp_path / "check", tiny_scene, tiny_prior_dir, user_env, "--edit-optimizers.fields.optimizer.lr", "0")
    assert result.returncode == 1
    rows = _rows((tmp_path / "check" / "edit_check.md").read_text())
    assert rows["ns-train pds, 6 + 3 + 6 iterations"][1:] == ["NO", "checkpoints at steps none; 0 non-finite steps"]
    assert rows["ns-render dataset --split test (pds)"][1] == "NO"
