"""Runs a batch's jobs on Ray: one task per job, each running its own `ns-train` process.

A task asks for a GPU where the cluster has one (a CPU otherwise). Ray retries a task whose worker died; the
retry resumes the job from its last checkpoint in a new attempt folder, so nothing is lost but the steps
since that checkpoint. An `ns-train` that fails is reported, not retried.

Each `ns-train` runs in a process group of its own, named in the job's status file, so that the batch can
stop it, and whatever it started, on Ctrl-C (`stop_edit_groups`) without waiting on Ray. It also dies with its
worker (Linux's parent-death signal), so a cancelled or killed task leaves no orphan behind on any node.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import psutil

from pds_nerfstudio.batch.plan import Job, finished_run, resume_from
from pds_nerfstudio.batch.ray_start import raylet_and_gcs_alive, started_since, starting_on_a_busy_machine
from pds_nerfstudio.batch.stopping import descendants, kill_processes, process_group, run_bounded, stop_processes


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The child gets SIGTERM when the process that started it (the Ray worker) dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def status_path(job: Job) -> Path:
    return job.runs / f"seed{job.seed}.status.json"


def stop_marker(output: Path) -> Path:
    """Written by a stopping batch before it stops anything: a task that starts after it runs no ns-train."""
    return output / ".pds-batch-stopping"


def read_status(job: Job) -> Dict[str, Any]:
    """The job's status file ({} when there is none yet, or it is being replaced)."""
    try:
        return json.loads(status_path(job).read_text())
    except (OSError, ValueError):
        return {}


def _write_status(job: Job, status: Dict[str, Any]) -> None:
    """Written whole (the batch reads it while the worker writes it)."""
    partial = status_path(job).with_suffix(".partial")
    partial.write_text(json.dumps(status))
    os.replace(partial, status_path(job))


def run_job(job: Job, env: Dict[str, str]) -> Dict[str, Any]:
    """One job, in the Ray worker: a new attempt, resumed from the latest checkpoint when there is one."""
    if stop_marker(job.output).exists():
        return {"state": "stopped", "note": "the batch was stopping when this edit's turn came"}
    attempt = len(job.attempts()) + 1
    load_dir = resume_from(job)
    job.runs.mkdir(parents=True, exist_ok=True)
    log = job.runs / f"seed{job.seed}-{attempt}.log"
    started = time.time()
    status = {"state": "running", "attempt": attempt, "host": socket.gethostname(), "pid": os.getpid(),
              "started": started, "resumed_from": str(load_dir) if load_dir else None}  # fmt: skip
    _write_status(job, status)
    with open(log, "w") as sink:
        process = subprocess.Popen(job.command(attempt, load_dir), stdout=sink, stderr=subprocess.STDOUT, cwd=job.base,
                                   env={**os.environ, **env}, start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
        _write_status(job, {**status, "process_group": process.pid})
        try:
            returncode = process.wait()
        finally:  # what the run left behind, or the whole run when the task is cancelled or its worker stopped
            stop_processes(process_group(process.pid), grace_s=5.0)
    done = returncode == 0 and finished_run(job) is not None
    result = {"state": "done" if done else "failed", "attempt": attempt, "seconds": time.time() - started,
              "returncode": returncode, "log": str(log), "run_dir": str(job.attempt_dir(attempt)),
              "resumed_from": status["resumed_from"]}  # fmt: skip
    _write_status(job, result)
    return result


def local_edit_groups(jobs: Iterable[Job], since: float) -> List[int]:
    """The `ns-train` process groups of the jobs running on this machine, started at or after `since` (an older
    status file may name a group that is long gone, its number reused)."""
    host, groups = socket.gethostname(), []
    for job in jobs:
        status = read_status(job)
        if (status.get("state") == "running" and status.get("host") == host and status.get("process_group")
                and status.get("started", 0) >= since):  # fmt: skip
            groups.append(int(status["process_group"]))
    return groups


def stop_edit_groups(groups: Iterable[int], grace_s: float = 5.0) -> None:
    """Stops `ns-train` process groups: SIGTERM, SIGKILL after `grace_s`. Their checkpoints stay (each is written
    whole, then renamed)."""
    stop_processes([process for pgid in groups for process in process_group(pgid)], grace_s)


def kill_local_ray(edit_groups: Iterable[int]) -> None:
    """SIGKILLs, without asking Ray anything, every process this batch started that is not in one of
    `edit_groups`: the local Ray's GCS, raylet and workers. Asked to cancel or shut down, or merely left running
    while the edits end, Ray's driver threads in this process may complete a task that they have already failed
    (its raylet died of the same Ctrl-C) and end the batch at a RAY_CHECK with exit status 1 (ray 2.60.0,
    task_manager.cc:1329 "Tried to complete task that was not pending"; seen once in 2 runs under load). Killed
    first, no Ray process is left to answer."""
    edits = set(edit_groups)

    def in_an_edit(process: psutil.Process) -> bool:
        try:
            return os.getpgid(process.pid) in edits
        except OSError:
            return False

    kill_processes(p for p in descendants() if not in_an_edit(p))


def stop_ray(ray, pending: Iterable[Any], timeout_s: float = 10.0) -> bool:
    """Cancels the pending tasks and shuts Ray down, each in a thread it is not waited on for longer than
    `timeout_s`: with Ray's GCS not answering, `ray.shutdown` waits in `disconnect` for as long as it does
    (measured: 120 s and on, with the GCS stopped). True: both returned."""
    refs = list(pending)
    cancelled = run_bounded(lambda: [ray.cancel(ref, force=True) for ref in refs], timeout_s / 2)
    return run_bounded(ray.shutdown, timeout_s) and cancelled


@dataclass
class BatchOptions:
    """How the batch runs on Ray."""

    address: Optional[str] = None
    """A running Ray cluster (`ray start --head` prints it); None: a local Ray started for this run."""
    local_cpus: Optional[int] = None
    """CPUs of the local Ray (None: every core)."""
    cpus_per_edit: int = 1
    gpus_per_edit: float = 1.0
    """GPUs a task asks for where the cluster has GPUs."""
    max_retries: int = 2
    """Times a task whose worker died is retried (each retry resumes from the last checkpoint)."""


class RayStartError(RuntimeError):
    """Ray did not start (its message says why and what to try)."""


RAY_START_ATTEMPTS = 2
"""Starts of a local Ray before the batch gives up (the first one's processes stopped before the second)."""


def start_ray(options: BatchOptions):
    """ray, initialised on the cluster or locally; ImportError with the install command when Ray is absent,
    RayStartError when it does not start."""
    try:
        import ray
    except ImportError:
        raise ImportError("pds-batch runs its edits on Ray, which is not installed: pip install -e '.[cluster]' "
                          "(or pip install 'ray==2.60.0')") from None  # fmt: skip
    if options.address:
        try:
            ray.init(address=options.address, log_to_driver=False)
        except Exception as error:  # noqa: BLE001 - Ray raises plain Exceptions and ConnectionErrors
            raise RayStartError(f"could not connect to the Ray cluster at {options.address}: {error}") from None
        return ray
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        before = {process.pid for process in descendants()}
        try:
            # Ray starts its workers at niceness 15, and an edit's ns-train with them: it then yields to anything
            # else the machine runs (measured: 6% of a core each, beside two busy processes). Here the edits are the work.
            with starting_on_a_busy_machine(lambda: raylet_and_gcs_alive(before)):
                ray.init(num_cpus=options.local_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                         _system_config={"worker_niceness": 0})  # fmt: skip
            return ray
        except Exception as error:  # noqa: BLE001 - "The current node timed out during startup" is a plain Exception
            ray.shutdown()
            stop_processes(started_since(before), grace_s=5.0)  # Ray leaves a failed start's processes running
            if attempt == RAY_START_ATTEMPTS:
                raise RayStartError(f"a local Ray did not start ({error}); if the machine is busy, run pds-batch "
                                    "again when it is not, or start Ray yourself and pass --address") from None  # fmt: skip
    raise AssertionError("unreachable")


def submit(ray, jobs: List[Job], options: BatchOptions) -> Dict[Any, Job]:
    """Submits one task per job; returns the pending object references and their jobs."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"num_gpus": options.gpus_per_edit} if has_gpu else {"num_cpus": options.cpus_per_edit}
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), "PYTHONUNBUFFERED": "1"}
    if not has_gpu:
        env["OMP_NUM_THREADS"] = str(options.cpus_per_edit)
    task = ray.remote(max_retries=options.max_retries, retry_exceptions=False, **resources)(run_job)
    return {task.remote(job, env): job for job in jobs}
