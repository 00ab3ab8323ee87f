"""Options that moved: an old spelling on the `ns-train` command line gets one `error:` line naming the new one.

A scene kind's own options moved from the pipeline to its nested scene config (`--pipeline.scene.*`) when the
scene kinds became configs of their own; docs/editing.md lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

MOVED_FLAGS: Dict[str, str] = {
    f"--pipeline.{name}": f"--pipeline.scene.{name}"
    for name in ("render-chunk-size", "deferred-backprop", "fast-encoding", "pds-proposal-losses", "edit-densify")
}
"""Old flag -> new flag."""


def moved_flag_error(argv: Sequence[str]) -> Optional[str]:
    """The error line for the first moved flag in `argv` (either spelling: `--flag value`, `--flag=value`;
    underscores as tyro accepts them), or None."""
    for argument in argv:
        name = argument.split("=", 1)[0]
        spelled = name[:2] + name[2:].replace("_", "-") if name.startswith("--") else name
        if spelled in MOVED_FLAGS:
            return f"error: {name} is now {MOVED_FLAGS[spelled]} (a scene kind's own options are under --pipeline.scene.)"
    return None


def refuse_moved_flags(argv: Optional[Sequence[str]] = None) -> None:
    """Exits with status 2 and the error line when `ns-train` was given a moved flag (run at plugin import, before
    nerfstudio's own parser, whose message for an unknown option would not say where it went)."""
    argv = sys.argv if argv is None else argv
    if not argv or Path(argv[0]).name != "ns-train":
        return
    error = moved_flag_error(argv[1:])
    if error is not None:
        print(error, file=sys.stderr)
        raise SystemExit(2)
