"""Waiting on events, never on a guess of how long something takes.

A test that waits for a process, a file or a line of output waits for that event. The only other way out
is a hang guard that ends nothing but a real hang, however slow or loaded the machine is:

- the process and everything it started have used no CPU at all for `IDLE_S` (a loaded machine makes slow
  progress, not none), or
- the command has run for `CAP_S`, far beyond anything a test here does even on a starved machine (a
  process tree with a Ray node in it never goes fully idle, so this is the guard of a Ray hang).

On a hang the process and its descendants are killed and the test fails with their output so far.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TypeVar

import psutil

IDLE_S = 300.0
"""Seconds of no CPU used by a whole process tree: nothing is happening there."""
CAP_S = 45 * 60.0
"""Seconds any one command may run: over twice the whole suite's time on two cores (CI allows 90 minutes)."""
POLL_S = 0.2

T = TypeVar("T")


class Hung(AssertionError):
    """A process tree stopped making progress (or ran past `CAP_S`)."""


class Exited(AssertionError):
    """The process exited before the event that was waited for."""


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_seconds(pid: int) -> float:
    """CPU used so far by the process, its live descendants and the children they have reaped."""
    total = 0.0
    for process in _tree(pid):
        with suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


class HangGuard:
    """Tells a real hang of the process tree under `pid` from a slow run."""

    def __init__(self, pid: int, what: str) -> None:
        self.pid, self.what = pid, what
        self.started = self.last_change = time.monotonic()
        self.cpu = _cpu_seconds(pid)

    def check(self) -> None:
        now, cpu = time.monotonic(), _cpu_seconds(self.pid)
        if cpu != self.cpu:
            self.cpu, self.last_change = cpu, now
        if now - self.last_change > IDLE_S:
            raise Hung(f"{self.what}: hung (its processes used no CPU for {IDLE_S:.0f} s)")
        if now - self.started > CAP_S:
            raise Hung(f"{self.what}: hung (still running after {CAP_S / 60:.0f} minutes)")


def kill_tree(pid: int) -> None:
    """SIGKILL to a process and every descendant (those in other sessions too: Ray workers, ns-train)."""
    for process in reversed(_tree(pid)):
        with suppress(psutil.Error):
            process.kill()
    with suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # started by `start`: the group it leads


def start(args: Sequence[str], env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
          merge_output: bool = False, sigint_ignored: bool = False) -> subprocess.Popen:  # fmt: skip
    """A command in a session of its own (so that it and what it starts can be signalled or killed as one),
    its output read through pipes as text. `sigint_ignored`: started as a shell script's background job is,
    with SIGINT ignored (POSIX shells do that where there is no job control)."""
    return subprocess.Popen(list(map(str, args)), env=env, cwd=cwd, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_ignore_sigint if sigint_ignored else None)  # fmt: skip


def _ignore_sigint() -> None:  # pragma: no cover - runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _until_exit(process: subprocess.Popen, what: str, step: Callable[[float], T]) -> T:
    """`step(timeout)` (a `communicate` or a `wait`) until it returns; on a hang the tree is killed first."""
    guard = HangGuard(process.pid, what)
    while True:
        try:
            return step(1.0)
        except subprocess.TimeoutExpired:
            try:
                guard.check()
            except Hung:
                kill_tree(process.pid)
                raise


def finish(process: subprocess.Popen, what: str) -> subprocess.CompletedProcess:
    """Waits for the process to exit, collecting its output; kills it and fails on a hang."""
    try:
        out, err = _until_exit(process, what, lambda timeout: process.communicate(timeout=timeout))
    except Hung as hang:
        out, err = process.communicate()
        raise Hung(f"{hang}\n{(out or '')[-3000:]}\n{(err or '')[-3000:]}") from None
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def run(args: Sequence[str], env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
        merge_output: bool = False) -> subprocess.CompletedProcess:  # fmt: skip
    """`subprocess.run(args, capture_output=True, text=True)`, with a hang guard in place of a timeout."""
    with running(args, env, cwd, merge_output) as process:
        return finish(process, " ".join(map(str, args[:3])))


@contextmanager
def running(args: Sequence[str], env: Optional[dict[str, str]] = None, cwd: Optional[Path] = None,
            merge_output: bool = False, sigint_ignored: bool = False) -> Iterator[subprocess.Popen]:  # fmt: skip
    """A command in the background; whatever the test's outcome, nothing of it is left running afterwards."""
    process = start(args, env, cwd, merge_output, sigint_ignored)
    try:
        yield process
    finally:
        if process.poll() is None or _tree(process.pid)[1:]:
            kill_tree(process.pid)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)  # after SIGKILL


def wait_for(event: Callable[[], Optional[T]], process: subprocess.Popen, what: str,
             output: Optional[Output] = None) -> T:  # fmt: skip
    """Polls `event` until it returns something truthy; fails if `process` exits first (with the end of
    its `output` where a reader has it), or hangs."""
    guard = HangGuard(process.pid, what)
    while True:
        value = event()
        if value:
            return value
        if process.poll() is not None:
            value = event()  # it may have happened just before the exit
            if value:
                return value
            tail = f":\n{output.all()[-3000:]}" if output is not None else ""
            raise Exited(f"{what}: the process exited ({process.returncode}) before it happened{tail}")
        guard.check()
        time.sleep(POLL_S)


def wait_exit(process: subprocess.Popen, what: str) -> int:
    """Waits for the process to exit (its output is read elsewhere: `Output`); kills it and fails on a hang."""
    return _until_exit(process, what, lambda timeout: process.wait(timeout=timeout))


class Output:
    """A process's merged output, read line by line as it comes (`start(..., merge_output=True)`)."""

    def __init__(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        self.process, self._lines = process, []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.append(line)

    def text(self) -> str:
        return "".join(self._lines)

    def until(self, marker: str, what: str) -> str:
        """The output so far, once `marker` has come; fails if the process exits without it."""
        return self.until_any((marker,), what)

    def until_any(self, markers: Sequence[str], what: str) -> str:
        """The output so far, once one of `markers` has come; fails if the process exits without any."""

        def seen() -> Optional[str]:
            text = self.text()
            return text if any(marker in text for marker in markers) else None

        try:
            return wait_for(seen, self.process, what)
        except Exited:
            self._reader.join(timeout=60)  # the process has exited: its last lines may still be in the pipe
            if seen():
                return self.text()
            raise AssertionError(f"{what}: none of {list(markers)} in the output:\n{self.text()[-3000:]}") from None

    def all(self) -> str:
        """Everything, once the process has exited."""
        self._reader.join(timeout=60)
        return self.text()
