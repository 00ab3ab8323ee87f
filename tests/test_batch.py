"""`pds-batch` on a local Ray of two workers with tiny edits: edits run, a failing one is reported while the
others go on, finished edits are skipped, a killed worker's edit resumes from its last checkpoint, Ctrl-C
stops cleanly, and bad edits files are refused in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

import pytest
import yaml

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


def _batch_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "pds_nerfstudio.cli.batch", str(path), "--local-cpus", "2"]


def _batch(path: Path, env: dict[str, str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    """The timeouts here only catch a hang: on two cores loaded by other work, a tiny edit took 9 minutes from
    the start of its Ray task (its ns-train wrote its run folder only after 5)."""
    try:
        return subprocess.run(_batch_command(path), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    finally:  # a timed-out batch leaves no edit running
        _kill_processes_of(cwd / "runs")


def _edits_file(folder: Path, scene: Path, prior: Path, edits: list, **options) -> Path:
    path = folder / "edits.yaml"
    shared = {"method": "pds", "source": "a red sphere",
              "options": {**TINY, "--pipeline.prior.model-id": str(prior), **options}}  # fmt: skip
    path.write_text(yaml.safe_dump({"output": "runs", "shared": shared, "edits": edits}))
    return path


def _stages(reconstruction: int, pds: int, refinement: int) -> dict:
    return {"--pipeline.reconstruction-iterations": reconstruction, "--pipeline.pds-iterations": pds,
            "--pipeline.refinement-iterations": refinement}  # fmt: skip


def test_a_batch_runs_its_edits_reports_the_failing_one_and_skips_what_finished(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    edits = [{"name": "blue", "scene": str(tiny_scene), "target": "a blue sphere"},
             {"name": "green", "scene": str(tiny_scene), "target": "a green sphere"},
             {"name": "broken", "scene": str(tiny_scene), "target": "a pink sphere",
              "options": {"--pipeline.guidance-scale": -1}}]  # fmt: skip
    path = _edits_file(tmp_path, tiny_scene, tiny_prior_dir, edits, **_stages(3, 2, 2))
    first = _batch(path, user_env, tmp_path)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]  # one edit failed
    assert "broken/seed0 FAILED" in first.stdout and "guidance scale must be a finite number > 0" in first.stdout
    summary = {row["edit"]: row for row in json.loads((tmp_path / "runs" / "batch_summary.json").read_text())}
    assert summary["blue"]["state"] == summary["green"]["state"] == "done" and summary["broken"]["state"] == "failed"
    for name in ("blue", "green"):
        run = Path(summary[name]["run_dir"])
        assert run == tmp_path / "runs" / name / "pds" / "seed0-1" and (run / "config.yml").is_file()
        assert summary[name]["seconds"] > 0 and summary[name]["attempt"] == 1
        colour = name
        assert summary[name]["measures"]["target_colour"] == colour and summary[name]["measures"]["views"] == 11
    assert (tmp_path / "runs" / "contact_sheet.png").is_file() and (tmp_path / "runs" / "batch_summary.md").is_file()

    again = _batch(path, user_env, tmp_path)
    assert "2 finished earlier, 1 to run" in again.stdout and again.returncode == 1
    assert not (tmp_path / "runs" / "blue" / "pds" / "seed0-2").exists()  # finished edits are not run again


def _worker_status(path: Path, deadline: float, attempt: int = 1, checkpoint: bool = True) -> dict:
    while time.monotonic() < deadline:
        if path.is_file():
            status = json.loads(path.read_text())
            run = path.parent / f"seed0-{attempt}" / "nerfstudio_models"
            if status.get("state") == "running" and (not checkpoint or list(run.glob("step-*.ckpt"))):
                return status
        time.sleep(0.5)
    raise AssertionError(f"no running attempt {attempt} in time")


def _processes_of(folder: Path) -> list[int]:
    """Pids of processes whose command line names `folder` (the batch's ns-train runs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(folder) in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@contextmanager
def _running_batch(path: Path, env: dict[str, str], cwd: Path) -> Iterator[subprocess.Popen]:
    """`pds-batch` in the background; whatever the test's outcome, nothing of it is left running afterwards."""
    batch = subprocess.Popen(_batch_command(path), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        yield batch
    finally:
        if batch.poll() is None:
            batch.kill()
            batch.wait()
        _kill_processes_of(cwd / "runs")


def _kill_processes_of(folder: Path) -> None:
    for pid in _processes_of(folder):
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_a_killed_worker_has_its_edit_resumed_from_its_last_checkpoint(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    edits = [{"name": "blue", "scene": str(tiny_scene), "target": "a blue sphere"}]
    path = _edits_file(tmp_path, tiny_scene, tiny_prior_dir, edits, **_stages(60, 4, 2), **{"--steps-per-save": 5})
    with _running_batch(path, user_env, tmp_path) as batch:
        status_file = tmp_path / "runs" / "blue" / "pds" / "seed0.status.json"
        status = _worker_status(status_file, time.monotonic() + 900)
        first_run = tmp_path / "runs" / "blue" / "pds" / "seed0-1"
        os.kill(status["pid"], signal.SIGKILL)  # the Ray worker dies mid-edit
        output, _ = batch.communicate(timeout=1800)
        assert batch.returncode == 0, output[-4000:]
        (row,) = json.loads((tmp_path / "runs" / "batch_summary.json").read_text())
        assert row["state"] == "done" and row["attempt"] == 2
        assert row["resumed_from"] == str(first_run / "nerfstudio_models")  # not started over
        log = Path(row["log"]).read_text()
        assert "Resuming the edit at step" in log
        assert not _processes_of(first_run)  # the killed worker's ns-train died with it


def test_ctrl_c_stops_the_batch_cleanly(tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    edits = [{"name": "long", "scene": str(tiny_scene), "target": "a blue sphere"}]
    path = _edits_file(tmp_path, tiny_scene, tiny_prior_dir, edits, **_stages(100000, 2, 2))
    with _running_batch(path, user_env, tmp_path) as batch:
        _worker_status(tmp_path / "runs" / "long" / "pds" / "seed0.status.json", time.monotonic() + 900, checkpoint=False)
        time.sleep(3)
        batch.send_signal(signal.SIGINT)
        output, _ = batch.communicate(timeout=300)  # Ray's shutdown is slow on a loaded machine
        assert batch.returncode == 130 and "run the same command to resume" in output, output[-3000:]
        deadline = time.monotonic() + 60
        while _processes_of(tmp_path / "runs") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_of(tmp_path / "runs")  # no ns-train left running


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
    result = _batch(path, user_env, tmp_path, timeout=120)
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
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "pip install -e '.[cluster]'" in result.stderr
