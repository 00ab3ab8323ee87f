"""Stopping `pds-batch` in bounded time, by design, whatever Ray is doing.

The first SIGINT (Ctrl-C) or SIGTERM raises `StopRequested` in the main thread, which stops the batch in
order (`cli/batch.py`): the running edits' `ns-train` process groups, then Ray with a bounded wait, then every
process the batch started that is still alive. None of those steps may wait for long, and none has to:

- A watcher thread is woken by the signal itself, through `signal.set_wakeup_fd` (written by CPython's C-level
  handler even while the main thread sits in Ray's C++ code, where Python-level handlers cannot run). It
  forces the exit `bound_s` after the first signal, and at once on a second one.
- The batch is a child subreaper (Linux `PR_SET_CHILD_SUBREAPER`): a process orphaned by a dead Ray worker or
  raylet is re-parented to the batch, not to init, so the final sweep of the batch's descendants finds it.
- The stop path leaves with `os._exit`, so that no atexit hook (Ray registers `ray.shutdown`) can wait again.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterable, List, NoReturn

import psutil

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOPPED_EXIT_STATUS = 130
"""128 + SIGINT, the shell's status for a command stopped by Ctrl-C (for SIGTERM too: the batch stopped)."""
STOP_BOUND_S = 25.0
"""Seconds from the first signal to the forced exit (the orderly stop's own waits add up to less)."""
RESUME_HINT = ("run the same command to resume (finished edits are skipped, the others resume from their last "
               "checkpoint)")  # fmt: skip


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the batch: stop the edits, keep their checkpoints."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def become_subreaper(on: bool = True) -> bool:
    """Orphaned descendants are re-parented to this process (Linux >= 3.4), or no longer (`on=False`); False
    where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    PR_SET_CHILD_SUBREAPER = 36
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def alive(processes: Iterable[psutil.Process]) -> List[psutil.Process]:
    """Those not gone; a zombie child is reaped here (it has exited: only its exit status was left)."""
    alive = []
    for process in processes:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                process.wait(timeout=0)
                continue
            alive.append(process)
        except (psutil.Error, OSError):
            continue
    return alive


def stop_processes(processes: Iterable[psutil.Process], grace_s: float) -> None:
    """SIGTERM, then SIGKILL to those still alive after `grace_s`; returns when they are gone (or unkillable)."""
    processes = alive(processes)
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(processes, timeout=grace_s)
    kill_processes(left)


def kill_processes(processes: Iterable[psutil.Process]) -> None:
    """SIGKILL, no grace; returns when they are gone (or after 2 s for the unkillable)."""
    processes = alive(processes)
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=2.0)


def process_group(pgid: int) -> List[psutil.Process]:
    """The live processes of a process group (an edit's `ns-train` and whatever it started)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                members.append(process)
        except (psutil.Error, OSError):
            continue
    return alive(members)


def descendants() -> List[psutil.Process]:
    """Every process this one started, directly or not (with the subreaper, orphans included)."""
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def stop_descendants(grace_s: float) -> None:
    """Stops every process this one started, directly or not (with the subreaper, orphans included)."""
    stop_processes(descendants(), grace_s)


def run_bounded(work: Callable[[], object], timeout_s: float) -> bool:
    """Runs `work` in a daemon thread; True if it returned within `timeout_s` (else it is left behind)."""
    finished = threading.Event()

    def target() -> None:
        try:
            work()
        except Exception:  # noqa: BLE001 - a failed step of the stop is a step done; the sweep follows
            pass
        finally:
            finished.set()

    threading.Thread(target=target, daemon=True, name="pds-batch-stop-step").start()
    return finished.wait(timeout_s)


class StopGuard:
    """Turns the first SIGINT/SIGTERM into `StopRequested`, and guarantees the exit: `bound_s` after it, or at
    a second signal, every descendant is killed and the process exits with status 130."""

    def __init__(self, prog: str, bound_s: float = STOP_BOUND_S) -> None:
        self.prog = prog
        self.bound_s = bound_s
        self._raised = False
        """`StopRequested` was raised (by the first signal that reached our handler)."""
        self._seen = False
        """The watcher has seen a first stop signal (whichever handler took it) and started the deadline."""
        self._stopping = False
        """The stop has begun (:meth:`begin_stop`): :meth:`check` has nothing left to raise."""
        self._signum = signal.SIGINT
        self._wakeup_read = -1
        self._report_unraisable = sys.__unraisablehook__

    def install(self) -> "StopGuard":
        """Call in the main thread before anything slow starts (Ray included)."""
        become_subreaper()
        self._wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_write, False)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        self.arm()
        self._report_unraisable, sys.unraisablehook = sys.unraisablehook, self._unraisable
        threading.Thread(target=self._watch, daemon=True, name="pds-batch-stop-watch").start()
        return self

    def arm(self) -> None:
        """(Re)installs the handlers: `ray.init` replaces the SIGTERM handler with its own `sys.exit`."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame) -> None:
        if not self._raised:
            self._raised, self._signum = True, signum
            raise StopRequested(signum)
        # A later signal: the watcher thread has seen it too and forces the exit.

    def _unraisable(self, unraisable) -> None:
        if isinstance(unraisable.exc_value, StopRequested):
            return  # delivered where Python can only drop it: `check` raises it again
        self._report_unraisable(unraisable)

    def check(self) -> None:
        """Raises the stop a signal asked for if its `StopRequested` was lost. Python runs signal handlers at
        any safe point of the main thread, and an exception raised inside a ``__del__`` or an at-fork hook (as
        while `ray.init` starts Ray's processes: seen once, in the loaded runs of the batch tests) is dropped
        with "Exception ignored in ...". Call it wherever the batch can stop; the watcher bounds the rest."""
        if self._raised and not self._stopping:
            raise StopRequested(self._signum)

    def begin_stop(self) -> None:
        """The stop has begun: :meth:`check` raises nothing from now on."""
        self._stopping = True

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self._wakeup_read, 64)
            except InterruptedError:
                continue
            for signum in data:
                if signum not in STOP_SIGNALS:
                    continue
                if not self._seen:
                    self._seen = True
                    threading.Thread(target=self._deadline, daemon=True, name="pds-batch-stop-deadline").start()
                else:
                    self.force(f"{signal.Signals(signum).name} again")

    def _deadline(self) -> None:
        time.sleep(self.bound_s)
        self.force(f"not stopped {self.bound_s:.0f} s after the first signal")

    def say(self, message: str) -> None:
        print(f"{self.prog}: {message}", file=sys.stderr, flush=True)

    def force(self, why: str) -> NoReturn:
        """Kills every descendant and exits 130 now, from any thread."""
        stop_descendants(grace_s=0.0)
        self.say(f"{why}: forced the exit; {RESUME_HINT}")
        self.exit()

    def exit(self, status: int = STOPPED_EXIT_STATUS) -> NoReturn:
        """Exits now, without running atexit hooks (Ray's `ray.shutdown` among them, which could wait again)."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
