"""Options that moved: an old spelling on the `ns-train` command line gets one `error:` line naming the new one.

A scene kind's own options moved from the pipeline to its nested scene config (`--pipeline.scene.*`) when the
scene kinds became configs of their own; docs/editing.md lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

MOVED_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "pds": ("render-chunk-size", "deferred-backprop", "fast-encoding", "pds-proposal-losses"),
    "pds-splat": ("edit-densify",),
}
"""Each method's options that moved from `--pipeline.<name>` to `--pipeline.scene.<name>`."""


def moved_flag_error(method: str, arguments: Sequence[str]) -> Optional[str]:
    """The error line for the first of `method`'s moved flags in `arguments` (`--flag value` or `--flag=value`,
    with underscores as tyro accepts them), or None. Another method's old flag is left to nerfstudio's parser:
    there is nothing of that name to point to."""
    moved = {f"--pipeline.{name}": f"--pipeline.scene.{name}" for name in MOVED_OPTIONS.get(method, ())}
    for argument in arguments:
        name = argument.split("=", 1)[0]
        spelled = name[:2] + name[2:].replace("_", "-") if name.startswith("--") else name
        if spelled in moved:
            return f"error: {name} is now {moved[spelled]} (a scene kind's own options are under --pipeline.scene.)"
    return None


def refuse_moved_flags(argv: Optional[Sequence[str]] = None) -> None:
    """Exits with status 2 and the error line when `ns-train` was given a moved flag (run at plugin import, before
    nerfstudio's own parser, whose message for an unknown option would not say where it went)."""
    argv = sys.argv if argv is None else argv
    if len(argv) < 2 or Path(argv[0]).name != "ns-train":
        return
    error = moved_flag_error(argv[1], argv[2:])
    if error is not None:
        print(error, file=sys.stderr)
        raise SystemExit(2)
