"""`pds-batch` on a local Ray of two workers with tiny edits: edits run, a failing one is reported while the
others go on, finished edits are skipped, a killed worker's edit resumes from its last checkpoint, Ctrl-C and
SIGTERM stop it whatever Ray is doing (starting, queueing, running, frozen), and bad edits files are refused
in one line. Every wait here is on an event (a status file, a line, an exit), guarded only against a hang
(tests/waiting.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import psutil
import pytest
import torch
import yaml

import waiting
from conftest import described

pytest.importorskip("ray")

TINY = {
    "--pipeline.prior.dtype": "fp32",
    "--pipeline.datamanager.train-num-rays-per-batch": 128,
    "--pipeline.model.num-nerf-samples-per-ray": 8,
    "--pipeline.model.num-proposal-samples-per-ray": [8, 8],
    "--pipeline.model.hidden-dim": 16,
    "--pipeline.model.log2-hashmap-size": 10,
    "--pipeline.model.eval-num-rays-per-chunk": 1024,
    "--steps-per-eval-batch": 100000, "--steps-per-eval-image": 100000, "--steps-per-eval-all-images": 100000,
}  # fmt: skip


def _batch_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pds_nerfstudio.cli.batch", str(path), "--local-cpus", "2", *extra]


def _edits_file(folder: Path, scene: Path, prior: Path, edits: list, **options) -> Path:
    path = folder / "edits.yaml"
    shared = {"method": "pds", "source": "a red sphere",
              "options": {**TINY, "--pipeline.prior.model-id": str(prior), **options}}  # fmt: skip
    path.write_text(yaml.safe_dump({"output": "runs", "shared": shared, "edits": edits}))
    return path


def _stages(reconstruction: int, pds: int, refinement: int) -> dict:
    return {"--pipeline.reconstruction-iterations": reconstruction, "--pipeline.pds-iterations": pds,
            "--pipeline.refinement-iterations": refinement}  # fmt: skip


def _status(runs: Path, name: str) -> dict:
    try:
        return json.loads((runs / name / "pds" / "seed0.status.json").read_text())
    except (OSError, ValueError):
        return {}


def _process_groups(runs: Path, names: tuple[str, ...]) -> list[int]:
    """The process groups of the named edits' ns-train, once every one has started ([] before)."""
    groups = [_status(runs, name).get("process_group") for name in names]
    return groups if all(groups) else []


def _checkpoints(runs: Path, name: str, attempt: int = 1) -> list[Path]:
    return sorted((runs / name / "pds" / f"seed0-{attempt}" / "nerfstudio_models").glob("step-*.ckpt"))


def test_a_batch_runs_its_edits_reports_the_failing_one_and_skips_what_finished(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    edits = [{"name": "blue", "scene": str(tiny_scene), "target": "a blue sphere"},
             {"name": "broken", "scene": str(tiny_scene), "target": "a pink sphere",
              "options": {"--pipeline.guidance-scale": -1}}]  # fmt: skip
    path = _edits_file(tmp_path, tiny_scene, tiny_prior_dir, edits, **_stages(3, 2, 2))
    first = waiting.run(_batch_command(path), user_env, tmp_path)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]  # one edit failed
    assert "broken/seed0 FAILED" in first.stdout and "guidance scale must be a finite number > 0" in first.stdout
    summary = {row["edit"]: row for row in json.loads((tmp_path / "runs" / "batch_summary.json").read_text())}
    assert summary["blue"]["state"] == "done" and summary["broken"]["state"] == "failed"
    run = Path(summary["blue"]["run_dir"])
    assert run == tmp_path / "runs" / "blue" / "pds" / "seed0-1" and (run / "config.yml").is_file()
    assert summary["blue"]["seconds"] > 0 and summary["blue"]["attempt"] == 1
    assert summary["blue"]["measures"]["target_colour"] == "blue" and summary["blue"]["measures"]["views"] == 11
    assert (tmp_path / "runs" / "contact_sheet.png").is_file() and (tmp_path / "runs" / "batch_summary.md").is_file()

    again = waiting.run(_batch_command(path), user_env, tmp_path)
    assert "1 finished earlier, 1 to run" in again.stdout and again.returncode == 1
    assert not (tmp_path / "runs" / "blue" / "pds" / "seed0-2").exists()  # finished edits are not run again


def test_a_killed_worker_has_its_edit_resumed_from_its_last_checkpoint(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path,
    left_behind: Callable[[], list[psutil.Process]],
) -> None:  # fmt: skip
    edits = [{"name": "blue", "scene": str(tiny_scene), "target": "a blue sphere"}]
    path = _edits_file(tmp_path, tiny_scene, tiny_prior_dir, edits, **_stages(60, 4, 2), **{"--steps-per-save": 5})
    runs, first_run = tmp_path / "runs", tmp_path / "runs" / "blue" / "pds" / "seed0-1"
    with waiting.running(_batch_command(path), user_env, tmp_path, merge_output=True) as batch:
        output = waiting.Output(batch)
        waiting.wait_for(lambda: _checkpoints(runs, "blue"), batch, "a checkpoint of attempt 1", output)
        edit = _status(runs, "blue")["process_group"]
        os.killpg(edit, signal.SIGSTOP)  # held where it is: it cannot finish before its worker dies
        assert int(_checkpoints(runs, "blue")[-1].stem.split("-")[1]) < 60 + 4 + 2 - 1
        os.kill(_status(runs, "blue")["pid"], signal.SIGKILL)  # the Ray worker dies mid-edit
        os.killpg(edit, signal.SIGCONT)  # its ns-train now acts on the parent-death signal
        assert waiting.wait_exit(batch, "pds-batch") == 0, output.all()[-4000:]
    (row,) = json.loads((runs / "batch_summary.json").read_text())
    assert row["state"] == "done" and row["attempt"] == 2
    assert row["resumed_from"] == str(first_run / "nerfstudio_models")  # not started over
    assert "Resuming the edit at step" in Path(row["log"]).read_text()
    assert not left_behind(), f"left running:\n{described(left_behind())}"  # the killed worker's ns-train died


def test_ctrl_c_stops_the_batch_cleanly(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path,
    left_behind: Callable[[], list[psutil.Process]],
) -> None:  # fmt: skip
    """Two edits running on the two workers and one queued; the first has a checkpoint. A terminal's Ctrl-C
    reaches the whole foreground process group: pds-batch, and Ray's GCS and raylet with it."""
    edits = [
        {"name": name, "scene": str(tiny_scene), "target": f"a {name} sphere"} for name in ("blue", "green", "pink")
    ]
    path = _edits_file(tmp_path, tiny_scene, tiny_prior_dir, edits, **_stages(100000, 2, 2), **{"--steps-per-save": 2})
    runs = tmp_path / "runs"
    with waiting.running(_batch_command(path), user_env, tmp_path, merge_output=True) as batch:
        output = waiting.Output(batch)
        groups = waiting.wait_for(lambda: _process_groups(runs, ("blue", "green")), batch, "two running edits", output)
        assert all(psutil.Process(group).nice() == psutil.Process(batch.pid).nice() for group in groups)  # not Ray's 15
        waiting.wait_for(lambda: _checkpoints(runs, "blue"), batch, "a checkpoint of the first edit", output)
        os.killpg(batch.pid, signal.SIGINT)
        assert waiting.wait_exit(batch, "pds-batch after Ctrl-C") == 130, output.all()[-3000:]
    text = output.all()
    assert "stopping: the running edits" in text and "run the same command to resume" in text, text[-3000:]
    assert not left_behind(), f"left running:\n{described(left_behind())}"  # no ns-train, raylet or worker
    assert not (runs / "pink" / "pds" / "seed0-1").exists()  # the queued edit never started
    kept = _checkpoints(runs, "blue")[-1]
    assert torch.load(kept, map_location="cpu", weights_only=False)["step"] >= 1  # the last checkpoint is whole
    summary = {row["edit"]: row["state"] for row in json.loads((runs / "batch_summary.json").read_text())}
    assert summary == {"blue": "stopped", "green": "stopped", "pink": "stopped"}
    resume = waiting.run(_batch_command(path, "--dry-run"), user_env, tmp_path)
    assert f"--load-dir {kept.parent}" in resume.stdout  # the same command resumes from it


def _stop_a_long_edit(
    folder: Path, scene: Path, prior: Path, env: dict[str, str], ready: Callable[[subprocess.Popen, Path], object],
    signum: int, before_signal: Callable[[subprocess.Popen], None],
) -> str:  # fmt: skip
    """One edit that would run for ever; once `ready(batch, runs)`, `before_signal(batch)`, then `signum` to
    pds-batch alone. Returns its output, having checked that it exited 130 and said how to resume."""
    edits = [{"name": "blue", "scene": str(scene), "target": "a blue sphere"}]
    path = _edits_file(folder, scene, prior, edits, **_stages(100000, 2, 2))
    with waiting.running(_batch_command(path), env, folder, merge_output=True) as batch:
        output = waiting.Output(batch)
        waiting.wait_for(lambda: ready(batch, folder / "runs"), batch, "the moment to signal", output)
        before_signal(batch)
        batch.send_signal(signum)
        assert waiting.wait_exit(batch, "pds-batch after the signal") == 130, output.all()[-3000:]
    text = output.all()
    assert "run the same command to resume" in text and "Traceback" not in text, text[-3000:]
    return text


def _edit_started(batch: subprocess.Popen, runs: Path) -> object:
    return _status(runs, "blue").get("process_group")


def _ray_starting(batch: subprocess.Popen, runs: Path) -> object:
    return [p for p in psutil.Process(batch.pid).children() if p.name() == "gcs_server"]


def _freeze_ray(batch: subprocess.Popen) -> None:
    """Ray's GCS and raylet stopped (SIGSTOP), as if the machine had swapped them out: Ray's own calls would
    wait on them."""
    for process in psutil.Process(batch.pid).children():
        if process.name() in ("gcs_server", "raylet"):
            process.suspend()


@pytest.mark.parametrize(
    ("ready", "signum", "before_signal"),
    [
        (_edit_started, signal.SIGTERM, lambda batch: None),  # as a job scheduler or `kill` sends it
        (_ray_starting, signal.SIGINT, lambda batch: None),  # Ctrl-C while the local Ray is still starting
        (_edit_started, signal.SIGINT, _freeze_ray),  # Ctrl-C while Ray does not answer
    ],
    ids=["SIGTERM while an edit runs", "SIGINT while Ray starts", "SIGINT with Ray frozen"],
)  # fmt: skip
def test_the_batch_stops_cleanly_whatever_ray_is_doing(
    ready: Callable, signum: int, before_signal: Callable, tiny_scene: Path, tiny_prior_dir: Path,
    user_env: dict[str, str], tmp_path: Path, left_behind: Callable[[], list[psutil.Process]],
) -> None:  # fmt: skip
    _stop_a_long_edit(tmp_path, tiny_scene, tiny_prior_dir, user_env, ready, signum, before_signal)
    assert not left_behind(), f"left running:\n{described(left_behind())}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("edits: [", "is not valid YAML"),
        ("edits: []", "needs a list `edits`"),
        ({"edits": [{"scene": "SCENE"}]}, "edit 1: `target` is missing"),
        ({"edits": [{"scene": "SCENE", "target": "t", "colour": "x"}]}, "unknown keys ['colour']"),
        ({"edits": [{"scene": "SCENE", "target": "t", "method": "nerfacto"}]}, "method 'nerfacto' is not one of"),
        ({"edits": [{"name": "a", "scene": "SCENE", "target": "t"}, {"name": "a", "scene": "SCENE", "target": "u"}]},
         "share a name and seed (a/seed0)"),
        ({"edits": [{"scene": "/no/such/scene", "target": "t"}]}, "scene folders not found: /no/such/scene"),
    ],
)  # fmt: skip
def test_bad_edits_files_are_refused_in_one_line(
    tiny_scene: Path, user_env: dict[str, str], tmp_path: Path, content, message: str
) -> None:
    path = tmp_path / "edits.yaml"
    if content is not None:
        text = content if isinstance(content, str) else yaml.safe_dump(content).replace("SCENE", str(tiny_scene))
        path.write_text(text)
    result = waiting.run(_batch_command(path), user_env, tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("pds-batch: error:") and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "batch_outputs").exists()


def test_a_toml_edits_file_with_list_options_reads_as_the_yaml_one(tiny_scene: Path, tmp_path: Path) -> None:
    from pds_nerfstudio.batch.plan import read_edits_file

    (tmp_path / "edits.toml").write_text(
        f'[shared]\nseeds = [0, 1]\noptions = ["--pipeline.model.num-proposal-samples-per-ray", 8, 8]\n\n'
        f'[[edits]]\nscene = "{tiny_scene}"\ntarget = "a blue sphere"\noptions = {{"--pipeline.seed" = 3}}\n'
    )
    jobs = read_edits_file(tmp_path / "edits.toml")
    assert [job.seed for job in jobs] == [0, 1] and jobs[0].name == f"{tiny_scene.name}-a-blue-sphere"
    assert jobs[0].options == ("--pipeline.model.num-proposal-samples-per-ray", "8", "8", "--pipeline.seed", "3")
    assert jobs[0].output == tmp_path / "batch_outputs" / "edits"


def test_without_ray_the_command_says_how_to_install_it(tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path) -> None:
    path = _edits_file(tmp_path, tiny_scene, tiny_prior_dir, [{"scene": str(tiny_scene), "target": "a blue sphere"}])
    code = f"import sys; sys.modules['ray'] = None; from pds_nerfstudio.cli.batch import main; sys.exit(main([{str(path)!r}]))"
    result = waiting.run([sys.executable, "-c", code], cwd=tmp_path)
    assert result.returncode == 2 and "pip install -e '.[cluster]'" in result.stderr
