"""The stop guard of `pds-batch` on its own, in a real process with real signals and no Ray: a second Ctrl-C
forces the exit at once, the bound forces it when the main thread is stuck in C code where no Python signal
handler can run, SIGTERM is a stop like SIGINT, and every process it started is gone afterwards."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path
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


def test_a_local_ray_that_fails_to_start_is_started_once_more_then_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray's init and shutdown stand in, failing as Ray fails when its raylet dies before registering.
    import contextlib
    import types

    from pds_nerfstudio.batch import runner
    from pds_nerfstudio.batch.runner import RAY_START_ATTEMPTS, BatchOptions, RayStartError, start_ray

    calls = []

    def init(**kwargs):
        calls.append("init")
        if calls.count("init") < failures:
            raise Exception("The current node timed out during startup.")

    fake = types.SimpleNamespace(init=init, shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(runner, "starting_on_a_busy_machine", lambda keep_waiting: contextlib.nullcontext())
    failures = RAY_START_ATTEMPTS  # the first start misses, the second starts
    assert start_ray(BatchOptions(local_cpus=1)) is fake and calls == ["init", "shutdown", "init"]
    calls.clear()
    failures = RAY_START_ATTEMPTS + 1  # every start misses
    with pytest.raises(RayStartError, match="a local Ray did not start .*timed out during startup.*--address"):
        start_ray(BatchOptions(local_cpus=1))
    assert calls == ["init", "shutdown"] * RAY_START_ATTEMPTS


def test_the_registration_wait_polls_while_the_raylet_lives_and_gives_up_when_it_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ray._private.services as services

    from pds_nerfstudio.batch import ray_start

    polls, lines = [], []

    def get_node(gcs_address, node_id):
        polls.append(node_id)
        if len(polls) < 4:
            raise RuntimeError("Failed to get node info")
        return {"node_id": node_id}

    monkeypatch.setattr(services, "get_node", get_node)
    monkeypatch.setattr(ray_start, "POLL_S", 0.0)
    monkeypatch.setattr(ray_start, "RAY_OWN_WAIT_S", -1.0)  # "after Ray's own wait" from the first miss on
    with ray_start.waiting_for_registration(lambda: True, lines.append):
        assert services.get_node is not get_node
        assert services.get_node("gcs", "n1") == {"node_id": "n1"} and len(polls) == 4
    assert services.get_node is get_node and len(lines) == 1 and "has not registered" in lines[0]
    polls.clear()
    with ray_start.waiting_for_registration(lambda: False, lines.append):  # the raylet died: Ray's own error path
        with pytest.raises(RuntimeError, match="Failed to get node info"):
            services.get_node("gcs", "n2")
    assert len(polls) == 1
    assert services.get_node is get_node


def test_ray_still_polls_the_new_node_where_the_registration_wait_hooks_in() -> None:
    """The hook replaces `ray._private.services.get_node` as `Node.__init__`'s raylet wait calls it (ray 2.60); a
    Ray whose wait reads otherwise would silently bring the 30 s limit back."""
    import inspect

    import ray._private.node

    source = inspect.getsource(ray._private.node.Node.__init__)
    assert "raylet_start_wait_time_s = 30" in source and "ray._private.services.get_node(" in source


# Starts a local Ray as pds-batch does, with its raylet stopped (SIGSTOP) as soon as it is started, before it can
# register (as a machine short of memory swaps it out); the test lets it run once Ray's own 30 s have passed.
RAY_START_PROGRAM = textwrap.dedent("""
    import functools, os, signal
    import ray._private.services as services
    from pds_nerfstudio.batch.runner import BatchOptions, start_ray

    @functools.wraps(services.start_raylet)
    def start_raylet_stopped(*args, **kwargs):
        process_info = start_raylet(*args, **kwargs)
        os.kill(process_info.process.pid, signal.SIGSTOP)
        print("raylet stopped", process_info.process.pid, flush=True)
        return process_info

    start_raylet, services.start_raylet = services.start_raylet, start_raylet_stopped
    ray = start_ray(BatchOptions(local_cpus=1))
    print("ray started", flush=True)
    ray.shutdown()
""")


def test_a_raylet_that_registers_after_rays_own_30_s_still_starts_the_batch(
    left_behind: Callable[[], list[psutil.Process]],
) -> None:
    with waiting.running([sys.executable, "-c", RAY_START_PROGRAM], merge_output=True) as process:
        output = waiting.Output(process)
        started = output.until("raylet stopped", "the raylet's start")
        raylet = psutil.Process(int(started.split("raylet stopped")[1].split()[0]))
        try:
            output.until("has not registered after 30 s", "Ray's own registration limit passing")
        finally:
            raylet.resume()
        output.until("ray started", "Ray's start once the raylet runs again")
        assert waiting.wait_exit(process, "the start program") == 0
    assert "timed out during startup" not in output.all()
    assert not left_behind(), described(left_behind())


# Holds Ray's two Python agents (dashboard and runtime-env) at their first line, as a machine busy with other work
# does, until the test releases them: ray 2.60's raylet gives them 15 s to write their ports, then aborts.
RAYS_AGENT_SCRIPTS = ("dashboard/agent.py", "runtime_env/agent/main.py")
HOLD_RAYS_AGENTS = textwrap.dedent(f"""
    import os, sys, time

    if any(arg.endswith({RAYS_AGENT_SCRIPTS!r}) for arg in sys.argv):
        while not os.path.exists(os.environ["RELEASE_RAYS_AGENTS"]):
            time.sleep(0.1)
""")
RAY_START_TASK_PROGRAM = textwrap.dedent("""
    import os, socket, time
    from pds_nerfstudio.batch.runner import BatchOptions, start_ray

    ray = start_ray(BatchOptions(local_cpus=1))
    print("ray started", flush=True)
    print("a task returned", ray.get(ray.remote(lambda: 42).remote()), flush=True)
    while not os.path.exists(os.environ["RELEASE_RAYS_AGENTS"]):
        time.sleep(0.1)
    node = ray._private.worker._global_node
    while True:  # the runtime-env agent, released, listens where it was told
        with socket.socket() as probe:
            if probe.connect_ex((node.node_ip_address, node.runtime_env_agent_port)) == 0:
                break
        time.sleep(0.1)
    print("the agents run; a task returned", ray.get(ray.remote(lambda: 43).remote()), flush=True)
    ray.shutdown()
""")


def test_rays_agents_that_the_machine_has_not_got_to_yet_do_not_stop_the_start(
    tmp_path: Path, left_behind: Callable[[], list[psutil.Process]]
) -> None:
    """The agents are held past the raylet's 15 s for their ports (fails so without `agent_ports_known_in_advance`:
    "Timed out waiting for file .../metrics_agent_port_..."): the batch's Ray starts and runs a task while they
    are held, and again once they run."""
    (tmp_path / "sitecustomize.py").write_text(HOLD_RAYS_AGENTS)
    release = tmp_path / "release"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
           "RELEASE_RAYS_AGENTS": str(release)}  # fmt: skip
    with waiting.running([sys.executable, "-c", RAY_START_TASK_PROGRAM], env=env, merge_output=True) as process:
        output = waiting.Output(process)
        output.until("a task returned 42", "a task while the agents are held")
        assert _held_agents(process.pid) == 2, output.all()  # both still held: nothing waited for them
        release.touch()
        output.until("the agents run; a task returned 43", "a task once the agents run")
        assert waiting.wait_exit(process, "the start program") == 0
    assert "timed out during startup" not in output.all() and "has not registered" not in output.all()
    assert not left_behind(), described(left_behind())


def _held_agents(pid: int) -> int:
    count = 0
    for process in psutil.Process(pid).children(recursive=True):
        try:
            command = process.cmdline()
        except psutil.Error:
            continue
        count += process.name() != "raylet" and any(arg.endswith(RAYS_AGENT_SCRIPTS) for arg in command)
    return count
