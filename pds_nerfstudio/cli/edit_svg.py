"""``pds-edit-svg``: edit an SVG drawing with PDS (or the SDS / DDS baselines) on a Stable Diffusion prior.

The drawing's control points and colours are optimised through the plain-torch rasteriser (pds_nerfstudio/svg/)
so that its render moves toward the target prompt (docs/svg.md). Writes OUTPUT_DIR/edited.svg, edited.png and
sheet.png (source | edit | difference); the input file is only read.

Example::

    pds-edit-svg --svg icon.svg --source-prompt "a red circle" --target-prompt "a blue circle" --output-dir out/

Defaults are the authors' SVG recipe (supplement S.3 and their svg_editing/pds_svg.py): guidance 100 for every
method; t in [0.05, 0.95] for SDS, [0.02, 0.98] for DDS, i in [0.1, 0.98] of the 500-step subset for PDS; 1000
Adam steps, points at 0.8 (pixels of a 512-pixel canvas) and colours at 0.01, colours clipped to [0, 1] after
each step; the render composited over white; the prompt suffix of their 'iconography' style.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from pds_nerfstudio.cli.common import UsageError, load_prior, run_command, save_sheet
from pds_nerfstudio.guidance.options import GuidanceOptions
from pds_nerfstudio.guidance.resizing import prior_size
from pds_nerfstudio.prior.stable_diffusion import DiffusionPriorConfig

PROG = "pds-edit-svg"
DESCRIPTION = (
    "Edit an SVG drawing (its control points and colours) with Posterior Distillation Sampling, or the SDS / DDS "
    "baselines, on a Stable Diffusion prior; writes OUTPUT_DIR/edited.svg, edited.png and sheet.png "
    "(source | edit | difference)."
)
SVG_NAME, PNG_NAME, SHEET_NAME = "edited.svg", "edited.png", "sheet.png"
NUM_SUBSET_STEPS = 500
STEP_RATIOS = {"pds": (0.1, 0.98), "sds": (0.05, 0.95), "dds": (0.02, 0.98)}
"""The supplement's timestep ranges (S.3): PDS's i, SDS's and DDS's t, as ratios."""
ICONOGRAPHY_SUFFIX = ". minimal flat 2d vector image. lineal color. trending on artstation"


@dataclass
class EditSvgConfig:
    """Edit an SVG drawing with Posterior Distillation Sampling on a Stable Diffusion prior."""

    svg: Path
    """Input SVG (paths, rect, circle, ellipse, line, polygon, polyline, in groups with transforms; solid fills and
    strokes). Only read."""
    target_prompt: str
    """Prompt describing the edited drawing (the prompt suffix is appended)."""
    output_dir: Path
    """Folder for edited.svg, edited.png and sheet.png; created when missing."""
    source_prompt: str = ""
    """Prompt describing the input drawing (needed by pds and dds; the prompt suffix is appended)."""
    method: Literal["pds", "sds", "dds"] = "pds"
    """Guidance: pds (identity-preserving), or the sds / dds baselines."""
    optimise: tuple[Literal["points", "colours", "widths"], ...] = ("points", "colours")
    """What the edit may change: control points, colours (fills and strokes, with their opacity), stroke widths;
    the authors' 'iconography' style is points and colours, their 'pixelart' colours only."""
    steps: int = 1000
    """Optimisation steps (authors: 1000)."""
    point_lr: float = 0.8
    """Adam rate of the control points, in pixels of a 512-pixel canvas (authors: 0.8); scaled with the canvas."""
    colour_lr: float = 0.01
    """Adam rate of the colours, channels in [0, 1] (authors: 0.01)."""
    width_lr: float = 0.1
    """Adam rate of the stroke widths (with `--optimise widths`), pixels of a 512-pixel canvas."""
    guidance_scale: float = 100.0
    """Classifier-free guidance weight (the supplement: 100 for PDS, SDS and DDS)."""
    weighting: Literal["authors", "paper", "dreamcatalyst"] = "authors"
    """PDS weighting: the authors' code (z_tgt - z_src), the paper's Eq. 16, or DreamCatalyst's."""
    min_step_ratio: float | None = None
    """Lower end of the timestep range, a ratio of the 500 subset steps (None: the method's: pds 0.1, sds 0.05,
    dds 0.02)."""
    max_step_ratio: float | None = None
    """Upper end of the timestep range (None: the method's: pds 0.98, sds 0.95, dds 0.98)."""
    timestep_schedule: Literal["random", "annealed"] = "random"
    """Timesteps uniform on the range (the paper's), or annealed from its top to its bottom over the steps."""
    prompt_suffix: str = ICONOGRAPHY_SUFFIX
    """Appended to both prompts (the authors' 'iconography' style); "" for none."""
    resolution: int | None = None
    """Short side of the image the prior sees (None: the prior's native 512 or 768); the drawing is rendered at
    that size directly (the coverage is exact: no supersampling)."""
    png_size: int = 512
    """Long side of edited.png and of each panel of sheet.png, pixels."""
    seed: int = 0
    """Seed of timesteps and noises."""
    overwrite: bool = False
    """Replace edited.svg / edited.png / sheet.png in OUTPUT_DIR if they exist."""
    prior: DiffusionPriorConfig = field(default_factory=DiffusionPriorConfig)
    """The Stable Diffusion prior."""


def step_ratios(config: EditSvgConfig) -> tuple[float, float]:
    """The timestep range: the options, or the method's range of the supplement."""
    low, high = STEP_RATIOS[config.method]
    return (low if config.min_step_ratio is None else config.min_step_ratio,
            high if config.max_step_ratio is None else config.max_step_ratio)  # fmt: skip


def guidance_options(config: EditSvgConfig) -> GuidanceOptions:
    """The edit's guidance, as every editor spells it (the prompts with their suffix)."""
    low, high = step_ratios(config)
    source = config.source_prompt + config.prompt_suffix if config.source_prompt.strip() else config.source_prompt
    target = config.target_prompt + config.prompt_suffix if config.target_prompt.strip() else config.target_prompt
    return GuidanceOptions(
        source_prompt=source, target_prompt=target, method=config.method, weighting=config.weighting,
        guidance_scale=config.guidance_scale, min_step_ratio=low, max_step_ratio=high,
        num_subset_steps=NUM_SUBSET_STEPS, timestep_schedule=config.timestep_schedule,
    )  # fmt: skip


def validate_config(config: EditSvgConfig) -> None:
    """Every check that needs neither the file nor the weights; raises UsageError naming the option."""
    try:
        guidance_options(config).validate_guidance("--")
    except ValueError as err:
        raise UsageError(str(err)) from err
    if not config.optimise:
        raise UsageError("--optimise names nothing: give points, colours and/or widths")
    if config.steps < 0:
        raise UsageError(f"--steps must be >= 0, got {config.steps}")
    for name in ("point_lr", "colour_lr", "width_lr"):
        if not getattr(config, name) > 0:
            raise UsageError(f"--{name.replace('_', '-')} must be > 0, got {getattr(config, name)}")
    if config.resolution is not None and config.resolution < 8:
        raise UsageError(f"--resolution must be at least 8 pixels, got {config.resolution}")
    if config.png_size < 8:
        raise UsageError(f"--png-size must be at least 8 pixels, got {config.png_size}")
    if config.output_dir.exists() and not config.output_dir.is_dir():
        raise UsageError(f"--output-dir {config.output_dir} is a file: choose a folder")
    for name in (SVG_NAME, PNG_NAME, SHEET_NAME):
        path = config.output_dir / name
        if path.exists() and path.resolve() == config.svg.resolve():
            raise UsageError(f"--output-dir {config.output_dir} would write {name} over the input --svg: choose another folder")
        if path.exists() and not config.overwrite:
            raise UsageError(f"{path} exists: pass --overwrite to replace it, or choose another --output-dir")


def read_drawing(path: Path):  # noqa: ANN201
    """The drawing of `path`; UsageError naming --svg when it cannot be edited."""
    from pds_nerfstudio.svg.parse import SvgError, load_svg

    if not path.exists():
        raise UsageError(f"--svg {path}: no such file")
    if not path.is_file():
        raise UsageError(f"--svg {path}: not a file")
    try:
        return load_svg(path)
    except SvgError as err:
        raise UsageError(f"--svg {err}") from err
    except OSError as err:
        raise UsageError(f"--svg {path}: cannot read it ({err.strerror or err})") from err


def png_shape(width: float, height: float, long_side: int) -> tuple[int, int]:
    """(height, width) of an image of the canvas whose long side is `long_side`."""
    scale = long_side / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def main(config: EditSvgConfig) -> Path:
    """Run the edit; returns the path of edited.svg.

    Raises:
        UsageError: bad options, a missing or unusable SVG, existing outputs without --overwrite.
        PriorLoadError: the prior cannot be loaded.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from pds_nerfstudio.svg.changes import summary_lines
    from pds_nerfstudio.svg.edit import Optimisation, edit_drawing
    from pds_nerfstudio.svg.rasterizer import render
    from pds_nerfstudio.svg.write import write_svg

    validate_config(config)
    source = read_drawing(config.svg)
    prior = load_prior(config.prior)
    console = Console(stderr=True)
    size = prior_size(source.height, source.width, config.resolution or prior.native_resolution, prior.vae_scale_factor)
    segments = int(source.segment_kind.shape[0])
    console.print(f"{PROG}: {source.num_shapes} shapes, {segments} segments, {source.points.shape[0]} control points on a "
                  f"{source.width:g}x{source.height:g} canvas; the prior sees {size[1]}x{size[0]}; "
                  f"{config.method.upper()} optimising {', '.join(config.optimise)}")  # fmt: skip
    source = source.to(prior.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=prior.device).manual_seed(config.seed)
    optimisation = Optimisation(tuple(config.optimise), config.steps, config.point_lr, config.colour_lr, config.width_lr)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    started = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{config.method.upper()} editing", total=config.steps)
        edited = edit_drawing(source, prior, guidance_options(config), optimisation, size, generator,
                              on_step=lambda step: progress.advance(task))  # fmt: skip
    seconds = time.perf_counter() - started

    config.output_dir.mkdir(parents=True, exist_ok=True)
    svg_path = write_svg(edited.to("cpu"), config.output_dir / SVG_NAME)
    height, width = png_shape(source.width, source.height, config.png_size)
    with torch.no_grad():
        before, after = render(source, height, width).cpu(), render(edited, height, width).cpu()
    difference = (after - before).abs().amax(0, keepdim=True).mul(3).clamp(0, 1).expand(3, -1, -1)
    save_sheet([after], config.output_dir / PNG_NAME)
    save_sheet([before, after, difference], config.output_dir / SHEET_NAME)
    per_step = f", {seconds / config.steps:.2f} s a step" if config.steps else ""
    console.print(f"{PROG}: {config.steps} steps in {seconds:.1f} s{per_step}")
    changed = float(((after - before).abs().amax(0) > 10 / 255).float().mean())
    for line in summary_lines(source.to("cpu"), edited.to("cpu")) + [f"pixels: {100 * changed:.1f}% changed by more than 10/255"]:
        console.print(f"  {line}")
    return svg_path


def entrypoint() -> None:
    """Console script ``pds-edit-svg``: errors are one line on stderr, never a traceback."""
    config = tyro.cli(EditSvgConfig, description=DESCRIPTION)
    result = run_command(PROG, main, config)
    print(f"wrote {result}, {result.parent / PNG_NAME} and {result.parent / SHEET_NAME}")


if __name__ == "__main__":
    entrypoint()
