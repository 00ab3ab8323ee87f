"""Starting a local Ray that waits for its raylet however busy the machine is.

ray 2.60 gives a new node's raylet 30 s, hard-coded, to register with the GCS (`ray/_private/node.py`,
`Node.__init__`: `raylet_start_wait_time_s = 30`, polling `ray._private.services.get_node`). Before it registers,
the raylet waits for its two Python agents (dashboard and runtime-env) to import Ray's modules and report their
ports: 8 s on an idle 2-core machine, more than 30 s on one busy with other work (seen in CI, twice in a row,
beside the other test worker's edits). Ray then raises "The current node timed out during startup" and leaves
the attempt's processes running.

`waiting_for_registration` replaces that poll, for the duration of one start, with one that keeps polling while
the attempt's raylet and GCS are alive: the start waits on the event (the raylet registered, or one of them
died), not on a guess of how long a busy machine takes. `REGISTRATION_BOUND_S` only keeps a raylet that is alive
but never registers from hanging the batch.
"""

from __future__ import annotations

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
