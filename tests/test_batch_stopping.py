"""The stop guard of `pds-batch` on its own, in a real process with real signals and no Ray: a second Ctrl-C
forces the exit at once, the bound forces it when the main thread is stuck in C code where no Python signal
handler can run, SIGTERM is a stop like SIGINT, and every process it started is gone afterwards."""

from __future__ import annotations

import signal
import sys
import textwrap
from typing import Callable

import psutil
import pytest

import waiting
from conftest import described

# A process that starts a child and then waits, either in Python (signal handlers run) or in C (they do not:
# as in Ray's C++ waits). On StopRequested it enters a stop step that never returns.
PROGRAM = textwrap.dedent("""
    import ctypes, os, signal, subprocess, sys, threading, time
    from pds_nerfstudio.batch.stopping import StopGuard, StopRequested, run_bounded

    guard = StopGuard("stop-test", bound_s=float(sys.argv[2])).install()
    child = subprocess.Popen(["sleep", "1000"])
    try:
        if sys.argv[1] == "python":
            print("waiting in python", flush=True)
            while True:
                time.sleep(0.1)
        if sys.argv[1] == "lost":
            class Dropped:
                def __del__(self):  # the handler runs in here, where Python can only drop its exception
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(1.0)
            Dropped()
            print("past the dropped stop", flush=True)  # the handler has run: check must raise at once
            guard.check()
            print("check raised nothing", flush=True)
            sys.exit(3)
        libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64)  # zeros: PTHREAD_MUTEX_INITIALIZER
        libc.pthread_mutex_lock(mutex)
        print("waiting in C", flush=True)
        libc.pthread_mutex_lock(mutex)  # locked already: waits for ever, and signals do not end the wait
    except StopRequested as stop:
        print(f"stopping on {stop}", flush=True)
        run_bounded(threading.Event().wait, 10**6)
""")


def _program(where: str, bound_s: float) -> list[str]:
    return [sys.executable, "-c", PROGRAM, where, str(bound_s)]


@pytest.mark.parametrize(("signum", "sigint_ignored"), [(signal.SIGINT, False), (signal.SIGTERM, False),
                                                       (signal.SIGINT, True)])  # fmt: skip
def test_a_second_signal_forces_the_exit_at_once(
    signum: int, sigint_ignored: bool, left_behind: Callable[[], list[psutil.Process]]
) -> None:
    """`sigint_ignored`: started as a script's background job is (`pds-batch edits.yaml &`), where Python
    leaves SIGINT ignored; the guard still takes it."""
    with waiting.running(_program("python", 10**6), merge_output=True, sigint_ignored=sigint_ignored) as process:
        output = waiting.Output(process)
        output.until("waiting in python", "the program's start")
        process.send_signal(signum)
        output.until(f"stopping on {signal.Signals(signum).name}", "the first signal's stop")
        process.send_signal(signum)
        assert waiting.wait_exit(process, "the program after a second signal") == 130
    assert f"{signal.Signals(signum).name} again: forced the exit; run the same command to resume" in output.all()
    assert not left_behind(), described(left_behind())  # its `sleep` child was killed


def test_a_stop_whose_exception_python_dropped_is_raised_again_by_check(
    left_behind: Callable[[], list[psutil.Process]],
) -> None:
    """A signal handled inside a __del__ (or an at-fork hook, as while ray.init starts Ray's processes): its
    StopRequested is dropped, without the noise of "Exception ignored", and `check` raises it again."""
    with waiting.running(_program("lost", 10**6), merge_output=True) as process:
        output = waiting.Output(process)
        seen = output.until_any(("stopping on SIGINT", "check raised nothing"), "the stop, raised again by check")
        assert "stopping on SIGINT" in seen, output.all()
        process.send_signal(signal.SIGINT)
        assert waiting.wait_exit(process, "the program after a second signal") == 130
    text = output.all()
    assert text.index("past the dropped stop") < text.index("stopping on SIGINT"), text
    assert "Exception ignored" not in text and "Traceback" not in text, text
    assert not left_behind(), described(left_behind())


def test_the_bound_forces_the_exit_when_python_handlers_cannot_run(
    left_behind: Callable[[], list[psutil.Process]],
) -> None:
    """The main thread is in a C call that does not return on a signal: only the watcher thread, woken through
    the signal wake-up fd, sees the Ctrl-C."""
    with waiting.running(_program("C", 2.0), merge_output=True) as process:
        output = waiting.Output(process)
        output.until("waiting in C", "the program's start")
        process.send_signal(signal.SIGINT)
        assert waiting.wait_exit(process, "the program after Ctrl-C") == 130
    assert "not stopped 2 s after the first signal: forced the exit" in output.all()
    assert "stopping on" not in output.all()  # the Python handler never ran
    assert not left_behind(), described(left_behind())


def test_a_local_ray_that_misses_its_start_deadline_is_started_once_more_then_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray's raylet must register within 30 s (not configurable); a machine busy with other work can miss that,
    # which no test can cause on demand: Ray's init and shutdown stand in, failing as Ray fails there.
    import types

    from pds_nerfstudio.batch.runner import RAY_START_ATTEMPTS, BatchOptions, RayStartError, start_ray

    calls = []

    def init(**kwargs):
        calls.append("init")
        if calls.count("init") < failures:
            raise Exception("The current node timed out during startup.")

    fake = types.SimpleNamespace(init=init, shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    failures = RAY_START_ATTEMPTS  # the first start misses, the second starts
    assert start_ray(BatchOptions(local_cpus=1)) is fake and calls == ["init", "shutdown", "init"]
    calls.clear()
    failures = RAY_START_ATTEMPTS + 1  # every start misses
    with pytest.raises(RayStartError, match="a local Ray did not start .*timed out during startup.*--address"):
        start_ray(BatchOptions(local_cpus=1))
    assert calls == ["init", "shutdown"] * RAY_START_ATTEMPTS
