"""`scripts/fidelity.py` end to end at tiny sizes: real ns-train runs of pds, sds and dds from one reconstruction,
measured, tabled and drawn; and its refusals. (The numbers at these budgets mean nothing; the README's table
comes from the script's defaults.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "fidelity.py"


def _fidelity(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_fidelity_runs_every_method_and_reports(user_env: dict[str, str], tiny_clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fidelity"
    tiny = ["--size", "32", "--num-views", "6", "--reconstruction-iterations", "20", "--edit-iterations", "3",
            "--refinement-iterations", "2", "--views-in-image", "2"]  # fmt: skip
    result = _fidelity([str(out), *tiny, "--source", "green cube", "--target", "pink cube",
                        "--clip-model", str(tiny_clip_dir)], user_env)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "fidelity.json").read_text())
    assert report["prompts"] == ["a green cube", "a pink cube"]
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["source", "pds", "sds", "dds"]
    source = rows["source"]
    assert source["depth_error"] == 0 and source["background_psnr"] == float("inf")  # itself: no change
    assert 0 <= source["silhouette_iou"] <= 1  # 20 iterations reconstruct little: only the range is known
    assert source["clip_directional"] == 0  # no change, no direction
    for row in rows.values():
        assert 0 <= row["attribute_success"] <= 1 and len(row["colours"]) == 6
        assert isinstance(row["clip_directional"], float)
    assert "| pds |" in result.stdout and "goals (PDS:" in result.stdout
    assert (out / "fidelity.md").read_text().startswith("Edit 'a green cube' -> 'a pink cube'")
    grid = Image.open(out / "side_by_side.png")
    assert grid.size == (5 * 64, 14 + 2 * 64)  # scene image, source, pds, sds, dds; two views, tiles 2x
    for method in ("pds", "sds", "dds"):
        config = out / "runs" / "scene" / "pds" / method / "config.yml"
        assert f"method: {method}" in config.read_text()

    again = _fidelity([str(out), *tiny, "--source", "green cube", "--target", "pink cube", "--measure-only"], user_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ ns-train" not in again.stdout  # nothing trained again
    measured = json.loads((out / "fidelity.json").read_text())["rows"]
    assert [(r["name"], r["colours"]) for r in measured] == [(r["name"], r["colours"]) for r in report["rows"]]


def test_fidelity_dry_run_prints_the_commands(user_env: dict[str, str], tmp_path: Path) -> None:
    result = _fidelity([str(tmp_path / "out"), "--dry-run", "--methods", "pds"], user_env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "$ ns-train pds-nerfacto --data" in result.stdout and "--pipeline.method pds" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "blue cube"], "must be the source's shape (sphere) in another colour"),
        (["--target", "red sphere"], "in another colour"),
        (["--source", "mauve sphere"], "unknown colour 'mauve'"),
        (["--clip-model", "/nonexistent"], "is not a CLIP folder"),
        (["--prior", "/nonexistent/prior"], "--prior /nonexistent/prior is not a Stable Diffusion folder"),
        (["--measure-only"], "holds no runs of an earlier call"),
    ],
)
def test_fidelity_refuses_bad_input(user_env: dict[str, str], tmp_path: Path, args: list[str], message: str) -> None:
    result = _fidelity([str(tmp_path / "out"), *args], user_env, timeout=120)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_fidelity_never_writes_into_a_used_folder(user_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    result = _fidelity([str(tmp_path)], user_env, timeout=120)
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
