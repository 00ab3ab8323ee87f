"""`scripts/fidelity.py` end to end at tiny sizes: real ns-train runs of pds, sds and dds from one reconstruction,
measured, tabled and drawn; and its refusals. (The numbers at these budgets mean nothing; the README's table
comes from the script's defaults.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import waiting
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "fidelity.py"


def _fidelity(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return waiting.run([sys.executable, str(SCRIPT), *args], env, REPO)


TINY = ["--size", "32", "--num-views", "8", "--reconstruction-iterations", "20", "--pds-iterations", "3",
        "--refinement-iterations", "2", "--splat-reconstruction-iterations", "20", "--splat-pds-iterations", "3",
        "--workers", "1"]  # fmt: skip


def test_fidelity_runs_every_method_and_pds_on_splats_through_both_stages_and_reports(
    user_env: dict[str, str], tiny_clip_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "fidelity"
    args = [str(out), *TINY, "--edits", "green cube:pink cube", "--seeds", "3"]
    result = _fidelity([*args, "--clip-model", str(tiny_clip_dir)], user_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "fidelity.json").read_text())
    (chain,) = report["chains"]
    assert chain["chain"]["source"] == "green cube" and chain["chain"]["seed"] == 3
    assert len(chain["train_views"]) == 7 and len(chain["eval_views"]) == 1  # 8 views, 0.875 for training
    assert 0 <= chain["prior_samples_read_as_target"] <= 1
    assert set(chain["runs"]) == {"pds", "sds", "dds", "pds-splat"}
    assert set(chain["source_vs_scene"]) == {"nerfacto", "splat"}
    for run in chain["runs"].values():
        for stage in ("pds", "refinement"):
            for part, count in (("train", 7), ("eval", 1)):
                measures = run[stage][part]
                assert 0 <= measures["attribute_success"] <= 1 and len(measures["colours"]) == count
                assert 0 <= measures["silhouette_iou"] <= 1
            assert isinstance(run[stage]["clip_directional"], float)
        assert run["iterations_to_edit"] is None or 1 <= run["iterations_to_edit"] <= 3
        assert run["iterations"] == {"pds": 3, "refinement": 2}  # as run (stage_ends.json): the caps here
    assert set(report["goals"]) == {"pds", "sds", "dds", "pds-splat"}
    assert "| 3 + 2 |" in result.stdout and "| pds |" in result.stdout and "Goals:" in result.stdout and "goal >= 90%" in result.stdout
    assert "green cube -> pink" in (out / "fidelity.md").read_text()
    grid = Image.open(out / "side_by_side.png")
    assert grid.size == (150 + 11 * 64, 14 + 64)  # scene, both sources, then each run after stages 1 and 2
    picture = tmp_path / "edits.png"  # the README's picture: scene, PDS on a NeRF, PDS on splats
    drawn = waiting.run([sys.executable, str(REPO / "scripts" / "readme_picture.py"), str(out), str(picture),
                         "--seed", "3", "--view", "0"])  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr
    pixels = np.asarray(Image.open(picture).convert("RGB"))
    assert pixels.shape == (64 + 28, 3 * 64, 3)
    renders = np.load(out / "green-cube_to_pink" / "seed3" / "renders.npz")
    for tile, key in enumerate(("scene", "pds/refinement", "pds-splat/refinement")):
        assert np.array_equal(pixels[14 : 14 + 64 : 2, tile * 64 : (tile + 1) * 64 : 2], renders[key][0])
    none = waiting.run([sys.executable, str(REPO / "scripts" / "readme_picture.py"), str(out), str(picture),
                        "--seed", "0"])  # fmt: skip
    assert none.returncode == 2 and none.stderr.startswith("readme_picture: error:") and "seed 0" in none.stderr
    runs = out / "green-cube_to_pink" / "seed3" / "runs" / "scene"
    for method in ("pds", "sds", "dds"):
        assert f"method: {method}" in (runs / "pds" / method / "config.yml").read_text()
    assert "method_name: pds-splat" in (runs / "pds-splat" / "pds" / "config.yml").read_text()

    again = _fidelity([*args, "--measure-only"], user_env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ ns-train" not in again.stdout  # nothing trained again
    measured = json.loads((out / "fidelity.json").read_text())["chains"][0]["runs"]
    assert {m: r["refinement"]["train"]["colours"] for m, r in measured.items()} == {
        m: r["refinement"]["train"]["colours"] for m, r in chain["runs"].items()
    }


def test_fidelity_measures_a_shape_edit_against_its_answer(user_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "shape"
    args = [str(out), *TINY, "--edits", "red sphere:red cube", "--seeds", "3", "--methods", "pds",
            "--scene-kinds", "nerfacto"]  # fmt: skip
    result = _fidelity(args, user_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = out / "red-sphere_to_cube" / "seed3"
    scene, answer = (json.loads((root / folder / "scene.json").read_text())["objects"][0]
                     for folder in ("scene", "target_scene"))  # fmt: skip
    assert (scene["shape"], answer["shape"]) == ("sphere", "cube") and scene["colour"] == answer["colour"] == "red"
    assert scene["centre"] == answer["centre"] and scene["size"] == answer["size"] and scene["yaw_deg"] == answer["yaw_deg"]
    (chain,) = json.loads((out / "fidelity.json").read_text())["chains"]
    assert 0 <= chain["prior_samples_read_as_target"] <= 1
    for stage in ("pds", "refinement"):
        measures = chain["runs"]["pds"][stage]["train"]
        assert 0 <= measures["target_shape_iou"] <= 1 and 0 <= measures["source_shape_iou"] <= 1
        assert 0 <= measures["attribute_success"] <= 1 and 0 <= measures["source_colour_kept"] <= 1
    assert "### Shape edits" in result.stdout and "red sphere -> cube" in result.stdout
    assert "### Colour edits" not in result.stdout and "shape edits, pds: the final silhouette" in result.stdout
    assert Image.open(out / "side_by_side.png").size == (150 + 5 * 64, 14 + 64)  # scene, answer, source, 2 stages

    variant = "low=--pipeline.guidance-scale 3"  # an option measured against the run at the matrix's options
    more = _fidelity([*args, "--extend", "--variant", variant], user_env)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert "$ ns-train pds-nerfacto" not in more.stdout and "--timestamp pds " not in more.stdout  # kept, not rerun
    assert "--timestamp pds+low" in more.stdout and "--pipeline.guidance-scale 3" in more.stdout
    report = json.loads((out / "fidelity.json").read_text())
    (extended,) = report["chains"]
    assert list(extended["runs"]) == ["pds", "pds+low"]
    before, after = (c["runs"]["pds"]["refinement"]["train"] for c in (chain, extended))  # the same run, kept
    measure_log = (root / "logs" / "measure.log").read_text()
    assert "pds: unchanged since the chain's earlier measures, kept" in measure_log and "pds+low: unchanged" not in measure_log
    assert "source reconstruction (nerfacto): unchanged" not in measure_log  # a new run is measured against it
    assert after["colours"] == before["colours"] and after["background_psnr"] == pytest.approx(before["background_psnr"])
    assert "guidance_scale: 3.0" in (root / "runs" / "scene" / "pds" / "pds+low" / "config.yml").read_text()
    assert set(report["goals"]["variants"]) == {"pds+low"} and "- pds+low against pds (1 chains)" in more.stdout
    assert all(extended["runs"][run]["seconds"][stage] > 0 for run in ("pds", "pds+low") for stage in ("pds", "refinement"))
    assert re.search(r"- pds\+low against pds \(1 chains\): \d+ of \d+ iterations \(\d+%\) in \d+ s against \d+ s", more.stdout)

    same = _fidelity([*args, "--extend", "--variant", variant], user_env)  # nothing new: nothing rendered again
    assert same.returncode == 0, same.stdout[-3000:] + same.stderr[-3000:]
    assert "$ ns-train" not in same.stdout
    measure_log = (root / "logs" / "measure.log").read_text()
    assert "source reconstruction (nerfacto): unchanged since the chain's earlier measures, kept" in measure_log
    assert "pds+low: unchanged since the chain's earlier measures, kept" in measure_log
    (again,) = json.loads((out / "fidelity.json").read_text())["chains"]
    assert again["source_vs_scene"] == extended["source_vs_scene"] and again["runs"]["pds+low"] == extended["runs"]["pds+low"]


def test_fidelity_dry_run_prints_every_chain_and_runs_nothing(user_env: dict[str, str], tmp_path: Path) -> None:
    result = _fidelity([str(tmp_path / "out"), "--dry-run", "--methods", "pds"], user_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("$ ns-train pds-nerfacto") == 22  # the full matrix: (8 colour + 3 shape edits) x 2 seeds
    assert result.stdout.count("$ ns-train pds-splatfacto") == 22 and result.stdout.count("$ ns-train pds-splat ") == 22
    assert "--pipeline.target-prompt 'a red cube'" in result.stdout  # red sphere -> red cube
    shape = _fidelity([str(tmp_path / "out"), "--dry-run", "--matrix", "shape", "--methods", "pds"], user_env)
    assert shape.stdout.count("$ ns-train pds-nerfacto") == 6 and "blue-cube_to_cylinder" in shape.stdout
    assert "--pipeline.method pds" in result.stdout and "--pipeline.refinement-iterations 210" in result.stdout
    # the NeRF reconstructions run 2,000 iterations (docs/fidelity.md, the reconstruction budget) and every edit
    # starts its stage 1 where they end
    assert result.stdout.count("--max-num-iterations 2000 ") == 22
    assert result.stdout.count("--pipeline.reconstruction-iterations 2000 ") == 22
    quick = _fidelity([str(tmp_path / "out"), "--dry-run", "--matrix", "quick"], user_env)
    assert quick.stdout.count("$ ns-train pds-nerfacto") == 2 and quick.stdout.count("--pipeline.method") == 8
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--edits", "red sphere:blue cube"],
         "the target must be the source's shape (sphere) in another colour, or another shape in its colour (red)"),
        (["--edits", "red sphere:red sphere"], "in another colour"),
        (["--edits", "red sphere blue sphere"], "write SOURCE:TARGET"),
        (["--edits", "mauve sphere:red sphere"], "unknown colour 'mauve'"),
        (["--clip-model", "/nonexistent"], "is not a CLIP folder"),
        (["--prior", "/nonexistent/prior"], "--prior /nonexistent/prior is not a Stable Diffusion folder"),
        (["--measure-only"], "does not hold the runs of an earlier call"),
        (["--extend"], "--extend: "),
        (["--extend", "--measure-only"], "give one"),
        (["--variant", "Fast=--pipeline.seed 1"], "write NAME=OPTIONS or NAME@KIND=OPTIONS"),
        (["--variant", "fast@gpu=--pipeline.seed 1"], "unknown scene kind 'gpu'"),
        (["--variant", "a=--pipeline.seed 1", "--variant", "a@splat=--pipeline.seed 2"], "given twice"),
    ],
)
def test_fidelity_refuses_bad_input(user_env: dict[str, str], tmp_path: Path, args: list[str], message: str) -> None:
    result = _fidelity([str(tmp_path / "out"), *args], user_env)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_fidelity_never_writes_into_a_used_folder(user_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    result = _fidelity([str(tmp_path)], user_env)
    assert result.returncode == 2 and "is not empty" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
