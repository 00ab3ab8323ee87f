"""What the editing command lines share: the one-line errors and warnings, quiet hub libraries, loading the prior,
and side-by-side sheets."""

from __future__ import annotations

import sys
from pathlib import Path
import warnings
from typing import Callable, NoReturn, Sequence, TypeVar

import torch
from jaxtyping import Float
from torch import Tensor

from pds_nerfstudio.data.image_io import save_png
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig, PriorLoadError


class UsageError(Exception):
    """A problem with the command line or the input files; reported in one line, exit status 2."""


def fail(prog: str, message: str, status: int) -> NoReturn:
    """`prog: error: message` on one line of stderr, then exit with `status`."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(status)


Config = TypeVar("Config")
Result = TypeVar("Result")


def run_command(prog: str, main: Callable[[Config], Result], config: Config) -> Result:
    """A console script's `main(config)` with warnings on one line each; bad options or input (UsageError, exit 2),
    a prior that cannot be loaded (exit 1) and Ctrl-C (exit 130) end in one `error:` line, never a traceback."""
    warnings.formatwarning = one_line_warnings(prog)
    try:
        return main(config)
    except UsageError as err:
        fail(prog, str(err), 2)
    except PriorLoadError as err:
        fail(prog, str(err), 1)
    except KeyboardInterrupt:
        fail(prog, "interrupted", 130)


def one_line_warnings(prog: str) -> Callable[..., str]:
    """A `warnings.formatwarning` that prints `prog: warning: message` and nothing else."""

    def format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
        return f"{prog}: warning: {message}\n"

    return format_warning


def quiet_hub_libraries() -> None:
    """No weight-loading progress bars or info chatter from transformers / diffusers on the console."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def load_prior(config: DiffusionPriorConfig, option_prefix: str = "--prior.") -> DiffusionPrior:
    """The prior of `config`, loaded (PriorLoadError when its weights cannot be; UsageError for a bad dtype or
    device option)."""
    quiet_hub_libraries()
    prior = DiffusionPrior(config, option_prefix=option_prefix)
    try:
        prior.load()
    except ValueError as err:  # dtype / device options
        raise UsageError(str(err)) from err
    return prior


def save_sheet(images: Sequence[Float[Tensor, "3 height width"]], path: Path) -> None:
    """Images of one height side by side, left to right, as one PNG."""
    save_png(torch.cat([image.detach().cpu() for image in images], dim=-1).permute(1, 2, 0), path)
