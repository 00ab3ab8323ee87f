"""Fixes for the environment traps that nerfstudio 1.1.5 users hit with current torch, offline.

nerfstudio imports every registered plugin from ``nerfstudio.configs.method_configs`` (through
``discover_methods``), and every one of ``ns-train``, ``ns-render``, ``ns-viewer``, ``ns-eval`` and
``ns-export`` imports that module before it loads a checkpoint. Our entry-point module calls
:func:`install` at import, so these fixes are in place on every path a user takes, with no
environment variable set by hand.
"""

from __future__ import annotations

import functools
import importlib
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def checkpoint_safe_globals() -> list[object]:
    """The globals a nerfstudio 1.1.5 checkpoint pickles besides tensors.

    torch >= 2.6 loads with ``weights_only=True`` by default; nerfstudio 1.1.5 calls
    ``torch.load(path, map_location="cpu")`` and its learning-rate schedulers store numpy
    scalars (``_last_lr``), which the weights-only unpickler refuses. Allow-listing the numpy
    scalar reconstructor and dtypes keeps the safe loader (no arbitrary code execution).
    """
    major = int(np.__version__.split(".")[0])
    multiarray = importlib.import_module("numpy._core.multiarray" if major >= 2 else "numpy.core.multiarray")
    dtypes = [type(np.dtype(name)) for name in ("float16", "float32", "float64", "int32", "int64", "bool")]
    return [multiarray.scalar, np.dtype, *dtypes]


def allow_nerfstudio_checkpoints() -> None:
    """Registers :func:`checkpoint_safe_globals` with torch's weights-only unpickler."""
    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is not None:  # torch < 2.4 has no allow-list and loads unsafely anyway
        add_safe_globals(checkpoint_safe_globals())


def ffmpeg_shim_dir() -> Path:
    """Folder that holds our ``ffmpeg`` link when the system has none."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "pds_nerfstudio" / "bin"


def ensure_ffmpeg_on_path() -> str | None:
    """Puts imageio-ffmpeg's bundled binary on PATH when no ``ffmpeg`` is found there.

    ``ns-render`` checks ``shutil.which("ffmpeg")`` and exits without one. Returns the path of
    the ``ffmpeg`` that is used, or None when neither the system nor imageio-ffmpeg has one.
    """
    found = shutil.which("ffmpeg")
    if found is not None:
        return found
    try:
        import imageio_ffmpeg

        bundled = Path(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        return None
    shim_dir = ffmpeg_shim_dir()
    link = shim_dir / "ffmpeg"
    try:
        shim_dir.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() and link.resolve() == bundled.resolve()):
            tmp = shim_dir / f"ffmpeg.{os.getpid()}.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(bundled)
            tmp.replace(link)  # atomic, so concurrent processes never see a broken link
    except OSError:
        return None
    os.environ["PATH"] = f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return str(link)


KNOWN_NERFSTUDIO_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"Using a non-tuple sequence for multidimensional indexing is deprecated", UserWarning,
     r"nerfstudio\.cameras\.cameras\Z"),
    (r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated", FutureWarning, r"nerfstudio\.engine\.trainer\Z"),
)  # fmt: skip
"""(message, category, module) of torch's deprecation warnings that nerfstudio 1.1.5's own code raises with
torch >= 2.4 on every run (cameras.py indexes with lists, six lines of it, each ray batch's first time; its
trainer builds ``torch.cuda.amp.GradScaler``). Nothing a user can act on. Filtered by message and module both,
so the same warning from any other code, and every new warning, still shows."""


def quiet_known_nerfstudio_warnings() -> None:
    """Ignores :data:`KNOWN_NERFSTUDIO_WARNINGS` (and nothing else)."""
    for message, category, module in KNOWN_NERFSTUDIO_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def external_method_stub_post_init(original: Callable[[object], None]) -> Callable[[object], None]:
    """``ExternalMethodDummyTrainerConfig.__post_init__`` with nerfstudio 1.1.5's own test, made cheap.

    nerfstudio builds one stub per not-installed external method (about 30) on every command, and each stub asks
    ``inspect.stack()[2].function == "get_external_methods"`` to stay quiet there. ``inspect.stack`` reads the
    source file and searches ``sys.modules`` for every frame of the import chain: seconds of each ``ns-train``'s
    start. ``sys._getframe(2)`` is the same frame ([0] this function, [1] the dataclass ``__init__``, [2] its
    caller) without that work. Anywhere else (the user picked such a method) nerfstudio's own method runs."""

    @functools.wraps(original)
    def __post_init__(self: object) -> None:
        if sys._getframe(2).f_code.co_name == "get_external_methods":
            return
        original(self)

    __post_init__.pds_original = original  # type: ignore[attr-defined]
    return __post_init__


def speed_up_external_method_stubs() -> None:
    """Installs :func:`external_method_stub_post_init` once (nerfstudio imports this plugin before it builds the
    stubs: ``discover_methods()`` runs first in nerfstudio 1.1.5's configs/method_configs.py)."""
    from nerfstudio.configs.external_methods import ExternalMethodDummyTrainerConfig as Stub

    if not hasattr(Stub.__post_init__, "pds_original"):
        Stub.__post_init__ = external_method_stub_post_init(Stub.__post_init__)


def install() -> None:
    """Applies every fix; cheap and idempotent."""
    allow_nerfstudio_checkpoints()
    ensure_ffmpeg_on_path()
    quiet_known_nerfstudio_warnings()
    speed_up_external_method_stubs()
