"""Runs a batch's jobs on Ray: one task per job, each running its own `ns-train` process.

A task asks for a GPU where the cluster has one (a CPU otherwise). Ray retries a task whose worker died; the
retry resumes the job from its last checkpoint in a new attempt folder, so nothing is lost but the steps
since that checkpoint. An `ns-train` that fails is reported, not retried. The `ns-train` process dies with
its worker (Linux's parent-death signal), so a cancelled or killed task leaves no orphan behind.
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
from typing import Any, Dict, List, Optional

from pds_nerfstudio.batch.plan import Job, finished_run, resume_from


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The child gets SIGTERM when the process that started it (the Ray worker) dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def status_path(job: Job) -> Path:
    return job.runs / f"seed{job.seed}.status.json"


def run_job(job: Job, env: Dict[str, str]) -> Dict[str, Any]:
    """One job, in the Ray worker: a new attempt, resumed from the latest checkpoint when there is one."""
    attempt = len(job.attempts()) + 1
    load_dir = resume_from(job)
    job.runs.mkdir(parents=True, exist_ok=True)
    log = job.runs / f"seed{job.seed}-{attempt}.log"
    started = time.time()
    status = {"state": "running", "attempt": attempt, "host": socket.gethostname(), "pid": os.getpid(),
              "started": started, "resumed_from": str(load_dir) if load_dir else None}  # fmt: skip
    status_path(job).write_text(json.dumps(status))
    with open(log, "w") as sink:
        process = subprocess.run(job.command(attempt, load_dir), stdout=sink, stderr=subprocess.STDOUT, cwd=job.base,
                                 env={**os.environ, **env}, preexec_fn=_die_with_parent)  # fmt: skip
    done = process.returncode == 0 and finished_run(job) is not None
    result = {"state": "done" if done else "failed", "attempt": attempt, "seconds": time.time() - started,
              "returncode": process.returncode, "log": str(log), "run_dir": str(job.attempt_dir(attempt)),
              "resumed_from": status["resumed_from"]}  # fmt: skip
    status_path(job).write_text(json.dumps(result))
    return result


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


def start_ray(options: BatchOptions):
    """ray, initialised on the cluster or locally; ImportError with the install command when Ray is absent."""
    try:
        import ray
    except ImportError:
        raise ImportError("pds-batch runs its edits on Ray, which is not installed: pip install -e '.[cluster]' "
                          "(or pip install 'ray==2.60.0')") from None  # fmt: skip
    if options.address:
        ray.init(address=options.address, log_to_driver=False)
    else:
        ray.init(num_cpus=options.local_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)
    return ray


def submit(ray, jobs: List[Job], options: BatchOptions) -> Dict[Any, Job]:
    """Submits one task per job; returns the pending object references and their jobs."""
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    resources = {"num_gpus": options.gpus_per_edit} if has_gpu else {"num_cpus": options.cpus_per_edit}
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), "PYTHONUNBUFFERED": "1"}
    if not has_gpu:
        env["OMP_NUM_THREADS"] = str(options.cpus_per_edit)
    task = ray.remote(max_retries=options.max_retries, retry_exceptions=False, **resources)(run_job)
    return {task.remote(job, env): job for job in jobs}
