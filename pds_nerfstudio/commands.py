"""Runs the commands a user types (`ns-train`, `ns-render`, ...) for the demo, the fidelity benchmark, the edit
check and the personalisation benchmark: each printed as the user would type it, then run, its output on the
console, in a log, or both."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional, Sequence, TextIO

BIN = Path(sys.executable).parent
"""Where this interpreter's console scripts are installed."""

REPO = Path(__file__).resolve().parents[1]
"""The checkout (or site-packages) folder that holds the package."""


def console_script(name: str) -> str:
    """The console script the user's shell would run: on PATH, else beside this interpreter."""
    return shutil.which(name) or str(BIN / name)


def shown(args: Sequence[object]) -> str:
    """A command as a user types it: console scripts and the interpreter by name, paths kept."""
    head = "python" if str(args[0]) == sys.executable else Path(str(args[0])).name
    return shlex.join([head, *map(str, args[1:])])


METHOD_CONFIGS = {
    "pds": "pds_nerfstudio.method_configs:pds_method",
    "pds-nerfacto": "pds_nerfstudio.method_configs:pds_nerfacto_method",
    "pds-splat": "pds_nerfstudio.method_configs:pds_splat_method",
    "pds-splatfacto": "pds_nerfstudio.method_configs:pds_splatfacto_method",
}
"""The plugin's methods, as pyproject.toml's nerfstudio.method_configs entry points name them (a test holds the two)."""


def command_env(one_thread: bool = True) -> dict[str, str]:
    """This environment for the commands: the hub offline (priors are local folders), output unbuffered, and
    the plugin reachable by `ns-train` and `ns-render` even where it is importable but not installed (the
    offline GPU machine), through nerfstudio 1.1.5's NERFSTUDIO_METHOD_CONFIGS.

    `one_thread`: one torch thread per process unless OMP_NUM_THREADS is set. On 2 cores shared with other
    work, two OpenMP threads that wait on each other made training 3 to 5 times slower (measured for
    `make demo`); one thread is about 1.4 times slower than two on an idle machine.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if one_thread and "OMP_NUM_THREADS" not in os.environ:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if "pds" not in entry_points(group="nerfstudio.method_configs").names:
        env["NERFSTUDIO_METHOD_CONFIGS"] = ",".join(f"{name}={target}" for name, target in METHOD_CONFIGS.items())
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_command(
    args: Sequence[object],
    env: dict[str, str],
    log: Optional[Path] = None,
    echo: bool = True,
    cwd: Optional[Path] = REPO,
) -> tuple[float, int]:
    """Prints `args` as typed, runs them, and returns (seconds, exit status). The output goes to the console
    (`echo`), to `log`, or to both; with neither it is discarded. `cwd` None: this process's folder."""
    print(f"$ {shown(args)}", flush=True)
    started = time.monotonic()
    command = [str(arg) for arg in args]
    if log is None:  # the console, or nowhere
        status = subprocess.call(command, cwd=cwd, env=env, stdout=None if echo else subprocess.DEVNULL,
                                 stderr=None if echo else subprocess.STDOUT)  # fmt: skip
        return time.monotonic() - started, status
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        _copy_lines(process.stdout, sink, echo)
        status = process.wait()
    return time.monotonic() - started, status


def _copy_lines(source: TextIO, sink: TextIO, echo: bool) -> None:
    for line in source:
        sink.write(line)
        if echo:
            sys.stdout.write(line)
            sys.stdout.flush()


def log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of a command's log, for a failure message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""
