"""Starting a local Ray that waits for its raylet however busy the machine is.

Two waits of ray 2.60 fail a start on a busy machine; each is replaced for the duration of one start.

**The raylet's wait for its agents' ports** (`agent_ports_known_in_advance`). A new raylet starts its dashboard
and runtime-env agents (Python processes), then blocks until each has written its port to a file in the session
directory, 15 s at most per file, hard-coded (`NodeManager::WaitForDashboardAgentPorts`); past that it aborts
("Timed out waiting for file .../metrics_agent_port_..."), and `ray.init` fails with "The current node timed out
during startup". On an idle 2-core machine the agents take about 5 s to import Ray and write their files; beside
other work they took more than 15 s (seen: four pds-batch tests failed so, beside a fidelity chain). Nothing in
those files is unknown in advance: the minimal agent that `pip install ray` runs writes -1 ("not in use") for
its three dashboard ports, and the runtime-env agent listens where it is told. So the start writes those -1 files
itself before the raylet starts, and hands the raylet and the runtime-env agent a free port: the raylet registers
without waiting for either agent, and the agents come up when the machine gets to them (tasks that set no
runtime environment do not need them). With `ray[default]` installed the dashboard agent is not minimal, its
ports are real, and the raylet keeps Ray's own wait for them.

**The wait for the raylet's registration** (`waiting_for_registration`).

ray 2.60 gives a new node's raylet 30 s, hard-coded, to register with the GCS (`ray/_private/node.py`,
`Node.__init__`: `raylet_start_wait_time_s = 30`, polling `ray._private.services.get_node`). Before the agents'
ports were known in advance, the raylet's wait for them made up most of that time (8 s on an idle 2-core machine,
more than 30 s beside the other CI test worker's edits); a raylet or GCS starved of CPU or swapped out can still
take longer. Ray then raises "The current node timed out during startup" and leaves the attempt's processes
running.

`waiting_for_registration` replaces that poll, for the duration of one start, with one that keeps polling while
the attempt's raylet and GCS are alive: the start waits on the event (the raylet registered, or one of them
died), not on a guess of how long a busy machine takes. `REGISTRATION_BOUND_S` only keeps a raylet that is alive
but never registers from hanging the batch.
"""

from __future__ import annotations

import inspect
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Set

import psutil

from pds_nerfstudio.batch.stopping import alive, descendants

RAY_OWN_WAIT_S = 30.0
"""ray 2.60's own limit on the raylet's registration (see the module's docstring)."""
REGISTRATION_BOUND_S = 600.0
"""Seconds a live raylet may take to register before the start fails anyway."""
POLL_S = 0.5


def started_since(before: Set[int]) -> List[psutil.Process]:
    """Descendants that were not among the pids `before`."""
    return [process for process in descendants() if process.pid not in before]


def raylet_and_gcs_alive(before: Set[int]) -> bool:
    """Whether a raylet and a GCS server started since `before` are both running."""
    names = set()
    for process in alive(started_since(before)):
        try:
            names.add(process.name())
        except psutil.Error:
            continue
    return {"raylet", "gcs_server"} <= names


@contextmanager
def agent_ports_known_in_advance() -> Iterator[None]:
    """Within the block, a raylet started by `ray.init` (`ray._private.services.start_raylet`) finds its minimal
    dashboard agent's ports already written (-1, as the agent writes them) and is told its runtime-env agent's
    port, so that it does not wait for either agent (see the module's docstring)."""
    import ray._private.services as services
    import ray._private.utils
    from ray._common.network_utils import find_free_port
    from ray._raylet import (
        DASHBOARD_AGENT_LISTEN_PORT_NAME,
        METRICS_AGENT_PORT_NAME,
        METRICS_EXPORT_PORT_NAME,
        persist_port,
    )

    ray_start_raylet = services.start_raylet
    parameters = inspect.signature(ray_start_raylet)

    def start_raylet_with_agent_ports(*args, **kwargs):
        call = parameters.bind(*args, **kwargs)
        if ray._private.utils.get_dashboard_dependency_error() is not None:  # the agent will run with --minimal
            for name in (METRICS_AGENT_PORT_NAME, METRICS_EXPORT_PORT_NAME, DASHBOARD_AGENT_LISTEN_PORT_NAME):
                persist_port(call.arguments["session_dir"], call.arguments["node_id"], name, -1)
        if not call.arguments.get("runtime_env_agent_port"):  # 0 or None: the raylet would wait for its file
            call.arguments["runtime_env_agent_port"] = find_free_port()
        return ray_start_raylet(*call.args, **call.kwargs)

    services.start_raylet = start_raylet_with_agent_ports
    try:
        yield
    finally:
        services.start_raylet = ray_start_raylet


@contextmanager
def waiting_for_registration(
    keep_waiting: Callable[[], bool], log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)
) -> Iterator[None]:
    """Within the block, Ray's poll for the new node (`ray._private.services.get_node`) keeps polling while
    `keep_waiting()`; `log` hears once when Ray's own 30 s have passed."""
    import ray._private.services as services

    ray_get_node = services.get_node
    first_poll: Optional[float] = None  # Ray's own wait starts with its first poll

    def get_node_once_registered(gcs_address, node_id):
        nonlocal first_poll
        first_poll = first_poll or time.monotonic()
        said_so = False
        while True:
            try:
                return ray_get_node(gcs_address, node_id)
            except RuntimeError:  # ray 2.60: "Failed to get node info ..." until the raylet registered
                waited = time.monotonic() - first_poll
                if waited > REGISTRATION_BOUND_S or not keep_waiting():
                    raise
                if waited > RAY_OWN_WAIT_S and not said_so:
                    log(f"pds-batch: Ray's raylet has not registered after {RAY_OWN_WAIT_S:.0f} s (a busy machine); "
                        "waiting while it runs")  # fmt: skip
                    said_so = True
                time.sleep(POLL_S)

    services.get_node = get_node_once_registered
    try:
        yield
    finally:
        services.get_node = ray_get_node


@contextmanager
def starting_on_a_busy_machine(keep_waiting: Callable[[], bool]) -> Iterator[None]:
    """Both replacements for one `ray.init`: the raylet waits for neither agent, and its registration is awaited
    while `keep_waiting()`."""
    with agent_ports_known_in_advance(), waiting_for_registration(keep_waiting):
        yield
