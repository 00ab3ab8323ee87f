"""``pds-batch``: run a grid of edits (scenes x prompts x methods x seeds) on Ray, each as its own `ns-train`.

    pds-batch edits.yaml                      # a local Ray started for the run (every core; a GPU per edit if any)
    pds-batch edits.yaml --address ray://head:10001   # a running Ray cluster
    pds-batch edits.yaml --dry-run            # the jobs and their commands, nothing run

Edits whose final checkpoint exists are skipped, so the same command resumes an interrupted batch; an edit
stopped part-way resumes from its last checkpoint. A failed edit is reported with its log's tail and the
others go on. Ctrl-C cancels what is running (its last checkpoint stays). At the end: a table, and
`batch_summary.md`, `batch_summary.json` and `contact_sheet.png` in the output folder. The edits file's
format is in `pds_nerfstudio/batch/plan.py` and docs/batch.md. Ray is an optional extra:
`pip install -e '.[cluster]'`.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence

PROG = "pds-batch"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))  # fmt: skip
    parser.add_argument("edits_file", type=Path, help="YAML or TOML: edits, and the options they share")
    parser.add_argument("--address", default=None, help="a running Ray cluster; default: a local Ray for this run")
    parser.add_argument("--local-cpus", type=int, default=None, help="CPUs of the local Ray (default: every core)")
    parser.add_argument("--cpus-per-edit", type=int, default=1, help="CPUs an edit asks for where there is no GPU")
    parser.add_argument("--gpus-per-edit", type=float, default=1.0, help="GPUs an edit asks for where there are GPUs")
    parser.add_argument("--max-retries", type=int, default=2, help="retries of an edit whose worker died")
    parser.add_argument("--dry-run", action="store_true", help="print the jobs and their commands, run nothing")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from pds_nerfstudio.batch.plan import EditsFileError, finished_run, read_edits_file, resume_from

    args = parse_args(argv)
    try:
        jobs = read_edits_file(args.edits_file)
        missing = sorted({str(job.scene) for job in jobs if not job.scene.is_dir()})
        if missing:
            raise EditsFileError(f"{args.edits_file}: scene folders not found: {', '.join(missing)}")
        if min(args.cpus_per_edit, args.max_retries + 1) < 1 or args.gpus_per_edit <= 0:
            raise EditsFileError("--cpus-per-edit and --gpus-per-edit must be > 0 and --max-retries >= 0")
    except EditsFileError as error:
        return _fail(str(error), 2)
    results: Dict[str, Dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = finished_run(job)
        if done is not None:
            results[job.key] = {"state": "skipped", "run_dir": str(done), "note": "finished earlier"}
        else:
            todo.append(job)
    output = jobs[0].output
    print(f"{PROG}: {len(jobs)} edits in {output}: {len(jobs) - len(todo)} finished earlier, {len(todo)} to run")
    if args.dry_run:
        for job in todo:
            load = resume_from(job)
            print(f"{job.key}: {shlex.join(job.command(len(job.attempts()) + 1, load))}")
        return 0
    if todo:
        refused = _run(args, todo, jobs, output, results)
        if refused is not None:
            return refused
    return 1 if _report(output, jobs, results) else 0


def _run(args: argparse.Namespace, todo: List[Any], jobs: List[Any], output: Path,
         results: Dict[str, Dict[str, Any]]) -> Optional[int]:  # fmt: skip
    """Runs the edits to do on Ray (an exit status where it cannot); a stop signal, from Ray's start to its
    shutdown, ends in `_stop`."""
    from pds_nerfstudio.batch.runner import BatchOptions, RayStartError, start_ray, stop_marker, stop_ray, submit
    from pds_nerfstudio.batch.stopping import StopGuard, stop_descendants

    guard = StopGuard(PROG).install()  # before Ray starts: a Ctrl-C while it starts stops the batch too
    stop_marker(output).unlink(missing_ok=True)
    options = BatchOptions(args.address, args.local_cpus, args.cpus_per_edit, args.gpus_per_edit, args.max_retries)
    started, pending = time.time(), {}
    try:
        try:
            ray = start_ray(options)
        except ImportError as error:
            return _fail(str(error), 2)
        except RayStartError as error:
            return _fail(str(error), 1)
        guard.arm()
        guard.check()  # a Ctrl-C while Ray started whose exception Python dropped
        pending = submit(ray, todo, options)
        _wait(ray, pending, results, guard.check)
        if not stop_ray(ray, []):
            guard.say("note: Ray did not shut down in time; its processes were stopped")
            stop_descendants(grace_s=2.0)
            guard.exit(1 if _report(output, jobs, results) else 0)  # not through Ray's atexit shutdown again
        return None
    except (KeyboardInterrupt, SystemExit) as stop:
        if isinstance(stop, SystemExit) and stop.code != signal.SIGTERM:  # ray.init's SIGTERM handler: sys.exit(15)
            raise
        _stop(guard, pending, todo, started, output, jobs, results, local=not options.address)


def _wait(ray, pending: Dict[Any, Any], results: Dict[str, Dict[str, Any]], check_stop: Callable[[], None]) -> None:
    """Waits for every task, showing done, running, failed and an ETA; `pending` keeps the tasks not yet done.
    `check_stop` raises a stop whose signal arrived while its exception could not be delivered."""
    from rich.live import Live
    from rich.table import Table

    from pds_nerfstudio.batch.runner import read_status

    started, total = time.time(), len(pending)
    finished_seconds: List[float] = []

    def view() -> Table:
        states = {job.key: read_status(job).get("state") or "queued" for job in pending.values()}
        running = [key for key, state in states.items() if state == "running"]
        done = sum(r["state"] == "done" for r in results.values() if "seconds" in r)
        failed = sum(r["state"] == "failed" for r in results.values())
        left = total - done - failed
        eta = "-"
        if finished_seconds and left:
            parallel = max(1, len(running))
            eta = f"{sum(finished_seconds) / len(finished_seconds) * left / parallel / 60:.1f} min"
        table = Table(title=f"pds-batch: {done} done, {len(running)} running, {failed} failed, {left} left; "
                            f"elapsed {(time.time() - started) / 60:.1f} min, ETA {eta}")  # fmt: skip
        for column in ("edit", "seed", "status"):
            table.add_column(column)
        for job in list(pending.values())[:20]:
            table.add_row(job.name, str(job.seed), states[job.key])
        return table

    with Live(view(), refresh_per_second=1, transient=True) as live:
        while pending:
            check_stop()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    results[job.key] = ray.get(ref)
                except Exception as error:  # noqa: BLE001 - a task that kept dying: reported, the batch goes on
                    results[job.key] = {"state": "failed", "error": " ".join(str(error).split())[:300]}
                if results[job.key].get("state") == "done":
                    finished_seconds.append(results[job.key]["seconds"])
                _announce(job, results[job.key])
            live.update(view())


def _stop(guard, pending: Dict[Any, Any], todo, started: float, output: Path, jobs,
          results: Dict[str, Dict[str, Any]], local: bool) -> NoReturn:  # fmt: skip
    """Ctrl-C or SIGTERM: Ray and the running edits' ns-train (their checkpoints stay), then anything the batch
    started that is still alive; the report; exit 130. The guard forces the exit if this takes too long, or at
    a second Ctrl-C. Ray may be anywhere: starting, queueing tasks, running them, shutting down.

    A local Ray is killed first and asked nothing (see :func:`pds_nerfstudio.batch.runner.kill_local_ray`); a
    cluster's is asked to cancel this batch's tasks, whose ns-train run on other machines, in bounded time."""
    from pds_nerfstudio.batch.runner import kill_local_ray, local_edit_groups, stop_edit_groups, stop_marker, stop_ray
    from pds_nerfstudio.batch.stopping import RESUME_HINT, stop_descendants

    guard.begin_stop()
    guard.say("stopping: the running edits and Ray (Ctrl-C again to force)")
    output.mkdir(parents=True, exist_ok=True)
    stop_marker(output).touch()  # first: a queued edit that gets a worker freed by the steps below starts nothing
    edits = local_edit_groups(todo, since=started)
    if local:
        kill_local_ray(edits)
    stop_edit_groups(edits)
    ray = sys.modules.get("ray")  # imported, perhaps not yet initialised
    if not local and ray is not None and hasattr(ray, "shutdown"):
        stop_ray(ray, pending)
    stop_descendants(grace_s=2.0)
    for job in todo:
        results.setdefault(job.key, {"state": "stopped", "note": "stopped; resumes from its last checkpoint"})
    try:
        _report(output, jobs, results)
    except Exception as error:  # noqa: BLE001 - the report is a courtesy here; the stop must not fail on it
        guard.say(f"note: no report written ({' '.join(str(error).split())[:200]})")
    guard.say(f"stopped; {RESUME_HINT}")
    guard.exit()


def _announce(job, result: Dict[str, Any]) -> None:
    if result.get("state") == "done":
        print(f"{PROG}: {job.key} done in {result['seconds'] / 60:.1f} min ({result['run_dir']})", flush=True)
        return
    tail = ""
    if result.get("log") and Path(result["log"]).is_file():
        tail = "\n".join("    " + line for line in Path(result["log"]).read_text().splitlines()[-12:])
    print(f"{PROG}: {job.key} FAILED ({result.get('error') or 'exit ' + str(result.get('returncode'))}); "
          f"log {result.get('log')}:\n{tail}", flush=True)  # fmt: skip


def _report(output: Path, jobs, results: Dict[str, Dict[str, Any]]) -> int:
    from pds_nerfstudio.batch.report import write

    table, summary_json, sheet = write(output, jobs, results)
    print(table)
    print(f"{PROG}: wrote {summary_json}" + (f" and {sheet}" if sheet else ""))
    return sum(r.get("state") == "failed" for r in results.values())


def _fail(message: str, status: int) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def entrypoint() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
