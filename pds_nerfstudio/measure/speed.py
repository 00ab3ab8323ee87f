"""Time and measure a stage-1 and a stage-2 iteration of the real `pds` pipeline, ours against the authors' call pattern.

    python scripts/benchmark.py                      # GPU: face scene (or a generated one), SD 1.5 architecture, 128/256/512
    python scripts/benchmark.py --resolutions 32 64  # CPU: tiny prior, generated scene

Modes (same scene, prior weights and seeds, in one run):
  authors: fp32 prior, one UNet call of batch 2 per branch, whole-view render with every chunk's graph kept,
           nerfstudio's hash encoding as shipped (--pipeline.scene.fast-encoding off).
  ours:    the `pds` defaults: half-precision prior on CUDA, one batched UNet call, deferred back-propagation,
           the hash encoding under torch.compile (--pipeline.scene.fast-encoding compile, also on CPU here; its
           compilation happens in the warm-up iterations).
  triton:  ours with the fused Triton hash encoding (--pipeline.scene.fast-encoding triton); on the GPU only by
           default (on CPU it runs in Triton's interpreter).
  splat:   `ns-train pds-splat` (Gaussian splats: gsplat on the GPU, the reference rasteriser on CPU) at the
           largest size, its Gaussians started from the scene's point cloud; on the GPU only by default.

Each mode's pipeline is built once. Its stage-1 rows change only the render size (--pipeline.render-scale)
and the chunk size; the diffusion half of a stage-1 step (encode with gradient, guidance, encoder backward),
a stage-2 iteration and an iteration of the scene's own method (nerfacto, or splatfacto for splat) depend on
neither, so they are measured once per mode.
Rows are measured in the order that decides most first (ours, large to small, then its other chunk sizes at
the largest; the authors' way, small to large, so that its out-of-memory sizes come last; triton), so a run
cut short by --time-budget or a killed job still holds them; --output rewrites the report after every row.

Prints ms per iteration (CUDA-synchronised, warm, median), peak GPU memory (allocated, and reserved by
torch's caching allocator: what a card must hold), the speed-up against the baseline, the device and
versions, and the projected time of a whole edit: at the authors' 30,000 + 15,000 iterations, and at the
iterations of each finished edit given with --project-run (its stage_ends.json: where its stages ended, e.g.
with --pipeline.stop-when-converged or a faster recipe).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

import torch

from pds_nerfstudio.fast.fast_encoding import encoding_in_use
from pds_nerfstudio.synthetic.procedural_scene import make_scene
from pds_nerfstudio.synthetic.tiny_prior import build_tiny_prior, default_prior_dir
from pds_nerfstudio.method_configs import pds_method, pds_splat_method
from pds_nerfstudio.edit.pipeline import EditPipeline
from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.measure import FACE_SCENE

PDS_ITERATIONS, REFINEMENT_ITERATIONS = 30000, 15000
MODES = ("ours", "authors", "triton", "splat")  # measured in this order
SHOWN = ("authors", "ours", "triton", "splat")  # the baseline first in each table
OUT_OF_MEMORY, SKIPPED = "out of memory", "skipped (time budget)"


@dataclass(frozen=True)
class EditLength:
    """The iterations of a whole edit, at which the report projects its time."""

    label: str
    pds: int
    refinement: int


AUTHORS_LENGTH = EditLength("the authors'", PDS_ITERATIONS, REFINEMENT_ITERATIONS)


def edit_length_of_run(run_dir: Path) -> EditLength:
    """The stage-1 and stage-2 iterations a finished edit ran, from its run_dir/stage_ends.json (written by every
    `ns-train pds` and `pds-splat` edit as its stages end); ValueError where the run holds none."""
    path = run_dir / "stage_ends.json"
    try:
        ended = json.loads(path.read_text())
        return EditLength(f"{run_dir.name}'s", int(ended["pds"]["iterations"]), int(ended["refinement"]["iterations"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} does not say where both stages ended ({type(error).__name__}: {error}); "
                         f"give the run folder of an edit that finished both stages") from error  # fmt: skip


@dataclass
class Stage1Row:
    """A stage-1 iteration of one mode at one render size and chunk size; `status` other than "ok": no numbers."""

    mode: str
    resolution: int
    chunk: int
    """Rays per chunk of the stage-1 render."""
    status: str = "ok"
    ms: Optional[float] = None
    peak_gib: Optional[float] = None
    """torch.cuda.max_memory_allocated during the row's iterations."""
    reserved_gib: Optional[float] = None
    """torch.cuda.max_memory_reserved: allocated plus the caching allocator's slack, what the card must hold."""


@dataclass
class ModeRow:
    """What one mode costs independently of the render size."""

    mode: str
    status: str = "ok"
    diffusion_ms: Optional[float] = None
    """The diffusion half of a stage-1 step at the prior's 512 px: encode with gradient, guidance, encoder backward."""
    stage2_ms: Optional[float] = None
    """A stage-2 iteration, its SDEdit every `sdedit_every` iterations amortised."""
    own_step_ms: Optional[float] = None
    """An iteration of the scene's own method on the same pipeline (nerfacto: a ray batch and its losses;
    splatfacto: a whole image and its losses)."""
    encoding: str = "-"
    """What computed the hash encodings (a fast path that failed to build reads "plain (... failed)")."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(run: Callable[[int], None], steps: range, warmup: int, device: torch.device) -> float:
    """Median wall time of `run(step)` over `steps`, after `warmup` untimed calls."""
    times = []
    for index, step in enumerate(steps):
        synchronize(device)
        start = time.perf_counter()
        run(step)
        synchronize(device)
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


TINY_MODEL = dict(
    num_nerf_samples_per_ray=16, num_proposal_samples_per_ray=(16, 8), hidden_dim=16, hidden_dim_color=16,
    num_levels=4, log2_hashmap_size=12,
)  # fmt: skip
"""CPU sizes (`--tiny`): the machinery at a cost a CPU can measure; not the numbers that matter."""


def build(scene: Path, prior: Path, device: torch.device, mode: str, tiny: bool):
    """The `pds` (or `pds-splat`) method's pipeline and optimisers with this mode's settings."""
    from nerfstudio.engine.optimizers import Optimizers

    method = pds_splat_method if mode == "splat" else pds_method
    config = copy.deepcopy(method.config.pipeline)
    if mode == "splat":
        config.model.num_downscales = 0  # full resolution: what an edit renders
    elif tiny:
        for name, value in TINY_MODEL.items():
            setattr(config.model, name, value)
        config.datamanager.train_num_rays_per_batch = 256
    config.datamanager.data = scene
    config.source_prompt, config.target_prompt = "a photo of a man", "a photo of a man with a clown face"
    config.reconstruction_iterations, config.pds_iterations, config.refinement_iterations = 0, 10**6, 10**6
    config.log_every = 10**9
    ours = mode != "authors"
    if mode != "splat":
        config.scene.deferred_backprop = ours
        config.scene.fast_encoding = {"authors": "off", "ours": "compile", "triton": "triton"}[mode]
    config.prior.model_id = str(prior)
    config.prior.device = str(device)
    config.prior.dtype = "fp16" if ours and device.type == "cuda" else "fp32"
    config.prior.batched_guidance = ours
    config.prior.channels_last = ours
    pipeline: EditPipeline = config.setup(device=str(device), test_mode="val")
    pipeline.train()
    optimizers = Optimizers(copy.deepcopy(method.config.optimizers), pipeline.get_param_groups())
    if mode == "splat":
        pipeline.model.step_cb(optimizers, 0)  # what splatfacto's training callback gives it before every step
    return pipeline, optimizers


class ModeBench:
    """One mode's pipeline, built once, and the measurements made on it."""

    def __init__(self, pipeline: EditPipeline, optimizers, device: torch.device, iterations: int, warmup: int) -> None:
        self.pipeline, self.optimizers, self.device = pipeline, optimizers, device
        self.iterations, self.warmup = iterations, warmup

    def autocast(self):
        return torch.autocast(device_type=self.device.type, enabled=self.device.type == "cuda")  # as nerfstudio's trainer

    def train_step(self, loss_of: Callable[[int], dict]) -> Callable[[int], None]:
        def step(index: int) -> None:
            self.optimizers.zero_grad_all()
            with self.autocast():
                losses = loss_of(index)
            sum(losses.values()).backward()
            self.optimizers.optimizer_step_all()

        return step

    def pipeline_step(self) -> Callable[[int], None]:
        """A training iteration of the `pds` pipeline at a global step, whose stage decides what it does."""
        return self.train_step(lambda step: self.pipeline.get_train_loss_dict(step)[1])

    def steps(self, start: int, every: int = 1) -> range:
        return range(start, start + every * (self.warmup + self.iterations), every)

    def render_at(self, scale: float, chunk: int) -> int:
        """Stage 1 renders at `scale` of the training resolution, `chunk` rays at a time (0: as it is); returns its first step."""
        self.pipeline.live.render_scale = scale
        if chunk:  # nerfacto's; a splat renders a view in one rasterisation
            self.pipeline.scene.render_chunk_size = chunk
        return self.pipeline.schedule.start(Stage.PDS)

    def stage1(self, scale: float, chunk: int) -> tuple[float, Optional[float], Optional[float]]:
        """(ms, peak allocated GiB, peak reserved GiB) of a stage-1 iteration at render `scale` and `chunk` rays."""
        start = self.render_at(scale, chunk)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        ms = median_ms(self.pipeline_step(), self.steps(start), self.warmup, self.device)
        if not cuda:
            return ms, None, None
        return ms, torch.cuda.max_memory_allocated(self.device) / 2**30, torch.cuda.max_memory_reserved(self.device) / 2**30

    def profile_stage1(self, scale: float, chunk: int) -> str:
        """torch.profiler's table of one warm stage-1 iteration: operators by their own device (or CPU) time, and the
        ranges "pds: render forward" (without graph when deferred) and "pds: diffusion half forward"; back-propagation
        is the rest."""
        pipeline, cuda = self.pipeline, self.device.type == "cuda"
        start, step = self.render_at(scale, chunk), self.pipeline_step()
        step(start)  # warm at this size

        def labelled(function: Callable, name: str) -> Callable:
            def run(*args, **kwargs):
                with torch.profiler.record_function(name):
                    return function(*args, **kwargs)

            return run

        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        render, guidance = pipeline.scene.render_view, pipeline.pds.guidance_loss
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(pipeline.scene, "render_view", labelled(render, "pds: render forward")))
            stack.enter_context(mock.patch.object(pipeline.pds, "guidance_loss", labelled(guidance, "pds: diffusion half forward")))
            with torch.profiler.profile(activities=activities) as profile:
                step(start + 1)
                synchronize(self.device)
        sort = "self_device_time_total" if cuda else "self_cpu_time_total"
        return profile.key_averages().table(sort_by=sort, row_limit=40)

    def diffusion_half(self) -> float:
        """ms of `PdsStage.guidance_loss` and its backward into a full-resolution image (no render)."""
        pipeline = self.pipeline
        start = self.render_at(1.0, 0)  # no render: the chunk size is left as it is
        cameras, view = pipeline.pds.render_cameras(), pipeline.pds.view_for_step(start)
        rgb = torch.rand(int(cameras.height[view]), int(cameras.width[view]), 3, device=self.device, requires_grad=True)

        def run(step: int) -> None:
            rgb.grad = None
            with self.autocast():
                loss, _ = pipeline.pds.guidance_loss(rgb, pipeline.pds.view_for_step(step), step)
            loss.backward()

        return median_ms(run, self.steps(start), self.warmup, self.device)

    def stage2(self) -> tuple[float, float]:
        """(ms of a stage-2 iteration with its SDEdit amortised, ms of an iteration of the scene's own method)."""
        pipeline, manager = self.pipeline, self.pipeline.datamanager
        # stage 2 starts from the stage-1 renders; the originals stand in for them
        originals = [manager.original_image(view)[..., :3].cpu() for view in range(manager.num_train_images)]
        pipeline.refinement.stage1_renders = torch.stack(originals)
        every, run_step = pipeline.config.sdedit_every, self.pipeline_step()
        blocks = self.steps(pipeline.schedule.start(Stage.REFINEMENT), every)
        stage2 = median_ms(lambda s: [run_step(s + i) for i in range(every)], blocks, self.warmup, self.device)
        own_step = self.train_step(lambda s: super(EditPipeline, pipeline).get_train_loss_dict(s)[1])
        own = median_ms(own_step, self.steps(0), self.warmup, self.device)
        return stage2 / every, own


def out_of_memory_guard(measure: Callable[[], object]) -> object:
    """measure(), or OUT_OF_MEMORY, or "failed (<error>)" for any other error (its traceback goes to stderr: one
    mode that cannot run, e.g. gsplat without a CUDA compiler, must not cost the others their rows); either
    way what a failed attempt held is freed before the next row."""
    try:
        result = measure()
    except torch.cuda.OutOfMemoryError:
        result = OUT_OF_MEMORY
    except Exception as error:  # noqa: BLE001 - reported in the row and on stderr
        import traceback

        traceback.print_exc()
        result = f"failed ({type(error).__name__}: {' '.join(str(error).split())[:80]})"
    # Out of the except block, so that its traceback no longer holds the tensors; the pipeline and
    # its hash encodings' fast forwards form reference cycles, which only the collector frees.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


class Report:
    """The rows measured so far, printed as markdown tables; rewritten to `output` after every row."""

    def __init__(
        self, device: torch.device, context: str, output: Optional[Path], lengths: tuple[EditLength, ...] = (AUTHORS_LENGTH,)
    ) -> None:
        self.device, self.context, self.output, self.lengths = device, context, output, lengths
        self.header = _header(device)
        self.stage1: list[Stage1Row] = []
        self.modes: dict[str, ModeRow] = {}

    def add(self, row: object) -> None:
        if isinstance(row, Stage1Row):
            self.stage1.append(row)
        else:
            assert isinstance(row, ModeRow)
            self.modes[row.mode] = row
        if self.output is not None:
            partial = self.output.with_name(self.output.name + ".partial")
            partial.write_text(self.text() + "\n")
            os.replace(partial, self.output)
            self.output.with_suffix(".json").write_text(json.dumps(self.as_json(), indent=1) + "\n")

    def as_json(self) -> dict:
        stage1, modes = [vars(row) for row in self.stage1], [vars(row) for row in self.modes.values()]
        lengths = [vars(length) for length in self.lengths]
        return {"header": self.header, "context": self.context, "stage1": stage1, "modes": modes, "edit_lengths": lengths}

    def text(self) -> str:
        lines = [self.header, self.context, ""]
        wholes = [f"whole edit, {length.pds:,} + {length.refinement:,}" for length in self.lengths]
        lines += [
            "| " + " | ".join(["render", "mode", "chunk", "stage 1 ms", "peak GiB", "reserved GiB", "speed-up", *wholes]) + " |",
            "|---:|---|---:|---:|---:|---:|---:|" + "---:|" * len(wholes),
        ]
        baselines = {row.resolution: row.ms for row in self.stage1 if row.mode == "authors" and row.ms}
        for row in sorted(self.stage1, key=lambda r: (r.resolution, SHOWN.index(r.mode), -r.chunk)):
            cells = [str(row.resolution), row.mode, str(row.chunk) if row.chunk else "-"]
            if row.ms is None:
                lines.append("| " + " | ".join(cells + [row.status, "", "", ""] + [""] * len(wholes)) + " |")
                continue
            base = baselines.get(row.resolution)
            mode = self.modes.get(row.mode)
            hours = ["-"] * len(self.lengths)
            if mode is not None and mode.stage2_ms is not None:
                hours = [_hours(length.pds * row.ms + length.refinement * mode.stage2_ms) for length in self.lengths]
            speedup = f"{base / row.ms:.2f}x" if base else "-"
            cells += [f"{row.ms:.1f}", _gib(row.peak_gib), _gib(row.reserved_gib), speedup, *hours]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            "| mode | diffusion half ms | stage 2 ms | own step ms | stage 2 / own step | encoding |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for mode in sorted(self.modes.values(), key=lambda r: SHOWN.index(r.mode)):
            if mode.status != "ok":
                lines.append(f"| {mode.mode} | {mode.status} | | | | {mode.encoding} |")
                continue
            assert mode.diffusion_ms is not None and mode.stage2_ms is not None and mode.own_step_ms is not None
            lines.append(
                f"| {mode.mode} | {mode.diffusion_ms:.1f} | {mode.stage2_ms:.1f} | {mode.own_step_ms:.1f} "
                f"| {mode.stage2_ms / mode.own_step_ms:.2f}x | {mode.encoding} |"
            )
        lines.append(
            "stage 1: render + diffusion half + back-propagation + optimiser step. Stage 2 includes its SDEdit every "
            "10 iterations, amortised. Own step: an iteration of the scene's own method (nerfacto; splatfacto for "
            "splat). Whole edit, N1 + N2 = N1 x stage 1 + N2 x stage 2, at "
            + "; ".join(f"{length.label} {length.pds:,} + {length.refinement:,}" for length in self.lengths)
            + "."
        )
        return "\n".join(lines)


def _hours(ms: float) -> str:
    if ms >= 3.6e6:
        return f"{ms / 3.6e6:.2f} h"
    return f"{ms / 6e4:.1f} min" if ms >= 6e4 else f"{ms / 1e3:.0f} s"


def _header(device: torch.device) -> str:
    """The device, the versions that decide the numbers, and when the run started."""
    import diffusers

    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        name = f"{properties.name} ({properties.total_memory / 2**30:.0f} GiB)"
    else:
        name = f"none (CPU, {torch.get_num_threads()} threads)"
    versions = f"torch {torch.__version__} | diffusers {diffusers.__version__} | nerfstudio {version('nerfstudio')}"
    try:
        versions += f" | triton {version('triton')}"
    except PackageNotFoundError:
        pass
    return f"GPU: {name} | {versions} | {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"


def _gib(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def plan(mode: str, resolutions: list[int], chunks: list[int]) -> list[tuple[int, int]]:
    """(resolution, chunk) of `mode`'s stage-1 rows, in the order they are measured (see the module docstring)."""
    if mode == "authors":  # its chunk size changes nothing that matters: every chunk's graph is kept
        return [(resolution, chunks[0]) for resolution in sorted(resolutions)]
    if mode == "splat":  # one rasterisation per view: no chunks; the largest size, as an edit renders
        return [(max(resolutions), 0)]
    ordered = sorted(resolutions, reverse=True)
    # the other chunk sizes at the largest size only, where memory binds
    return [(resolution, chunks[0]) for resolution in ordered] + [(ordered[0], chunk) for chunk in chunks[1:]]


def measure_mode(
    mode: str,
    rows: list[tuple[int, int]],
    build_mode: Callable[[], tuple],
    args: argparse.Namespace,
    short_side: int,
    out_of_time: Callable[[], bool],
    report: Report,
) -> None:
    """Builds `mode`'s pipeline and adds its stage-1 rows ((resolution, chunk) each), its profile and its mode row."""
    built = SKIPPED if out_of_time() else out_of_memory_guard(build_mode)
    if isinstance(built, str):  # skipped, out of memory, or failed
        for resolution, chunk in rows:
            report.add(Stage1Row(mode, resolution, chunk, status=built))  # type: ignore[arg-type]
        report.add(ModeRow(mode, status=built))  # type: ignore[arg-type]
        return
    bench = ModeBench(*built, report.device, args.iterations, args.warmup)  # type: ignore[misc]
    for resolution, chunk in rows:
        row = Stage1Row(mode, resolution, chunk, status=SKIPPED)
        if not out_of_time():
            result = out_of_memory_guard(lambda: bench.stage1(resolution / short_side, chunk))
            if isinstance(result, str):
                row.status = result
                bench.optimizers.zero_grad_all()
            else:
                row.status = "ok"
                row.ms, row.peak_gib, row.reserved_gib = result  # type: ignore[misc]
        report.add(row)
        measured = row.status if row.ms is None else f"{row.ms:.1f} ms"
        print(f"stage 1, {mode} at {resolution} (chunk {chunk}): {measured}", flush=True)
    if args.profile and not out_of_time():
        path = args.output.with_name(f"{args.output.stem}-profile-{mode}.txt")
        largest, chunk = max(resolution for resolution, _ in rows), rows[0][1]
        table = out_of_memory_guard(lambda: bench.profile_stage1(largest / short_side, chunk))
        path.write_text(f"{report.header}\none stage-1 iteration of {mode} at {largest} px, chunk {chunk}\n{table}\n")
        print(f"profile of {mode} written to {path}", flush=True)
    mode_row = ModeRow(mode, status=SKIPPED)
    if not out_of_time():
        diffusion = out_of_memory_guard(bench.diffusion_half)
        stage2 = diffusion if isinstance(diffusion, str) else out_of_memory_guard(bench.stage2)
        if isinstance(stage2, str):
            mode_row.status = stage2
        else:
            mode_row.status = "ok"
            mode_row.diffusion_ms = diffusion  # type: ignore[assignment]
            mode_row.stage2_ms, mode_row.own_step_ms = stage2  # type: ignore[misc]
    mode_row.encoding = encoding_in_use(bench.pipeline.model)
    report.add(mode_row)
    print(f"diffusion half, stage 2 and nerfacto of {mode}: {mode_row.status}", flush=True)


def resolve_prior(choice: str, device: torch.device, workdir: Path) -> Path:
    if choice == "auto":
        choice = "sd15" if device.type == "cuda" else "tiny"
    if choice == "tiny":
        return default_prior_dir()
    if choice == "sd15":
        print("building the SD 1.5 architecture with random weights (same compute as real weights)...", flush=True)
        return build_tiny_prior(workdir / "sd15", architecture="sd15", torch_dtype="float16")
    return Path(choice)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="auto", help="scene folder; auto: the face scene if present, else generated")
    parser.add_argument("--prior", default="auto", help="tiny, sd15 (random weights) or a pipeline folder; auto: sd15 on GPU")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, help="stage-1 render sizes (short side)")
    parser.add_argument("--modes", nargs="+", default=None, choices=MODES,
                        help="default: authors ours, and triton and splat on the GPU")
    parser.add_argument("--render-chunk-sizes", type=int, nargs="+", default=[0],
                        help="rays per stage-1 chunk of ours and triton (--pipeline.scene.render-chunk-size; 0: the pipeline's "
                             "default): the first at every render size, the others at the largest, one row each; "
                             "e.g. 0 8192 4096 for the memory of smaller cards")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--device", default=None, help="cuda or cpu; default: cuda when available")
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                        help="tiny nerfacto and a generated scene (default on CPU)")  # fmt: skip
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds after which no measurement starts (those left read 'skipped'); "
                             "the report is still printed")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None,
                        help="markdown report, rewritten after every row (and a .json beside it)")  # fmt: skip
    parser.add_argument("--project-run", type=Path, action="append", default=[], metavar="RUN_DIR",
                        help="also project the whole edit at the iterations this finished edit ran (its stage_ends.json), "
                             "e.g. a run with --pipeline.stop-when-converged; repeatable")  # fmt: skip
    parser.add_argument("--profile", action="store_true",
                        help="also profile one stage-1 iteration of each mode at the largest size (torch.profiler's operator "
                             "table), written beside --output as <name>-profile-<mode>.txt")  # fmt: skip
    args = parser.parse_args(argv)
    if args.profile and args.output is None:
        parser.error("--profile writes beside the report: give --output too")
    try:
        lengths = (AUTHORS_LENGTH, *(edit_length_of_run(run) for run in args.project_run))
    except ValueError as error:
        parser.error(f"--project-run: {error}")
    started = time.monotonic()

    def out_of_time() -> bool:
        return args.time_budget is not None and time.monotonic() - started > args.time_budget

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = device.type == "cpu" if args.tiny is None else args.tiny
    resolutions = args.resolutions or ([128, 256, 512] if not tiny else [32, 64])
    modes = args.modes or (["authors", "ours", "triton", "splat"] if device.type == "cuda" else ["authors", "ours"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.scene != "auto":
            scene = Path(args.scene)
        elif FACE_SCENE.is_dir() and not tiny:
            scene = FACE_SCENE
        else:
            scene = workdir / "scene"
            make_scene(scene, size=64 if tiny else 512, num_views=12, objects=("red sphere", "blue cube"))
        short_side = _short_side(scene)
        if max(resolutions) > short_side:
            parser.error(f"--resolutions: {max(resolutions)} is above the scene's short side ({short_side} px)")
        prior = resolve_prior(args.prior, device, workdir)
        context = f"scene {scene.name} ({short_side} px), prior {prior.name}, median of {args.iterations} after {args.warmup}"
        print(context, flush=True)
        report = Report(device, context, args.output, lengths)
        chunks = [chunk or pds_method.config.pipeline.scene.render_chunk_size for chunk in args.render_chunk_sizes]
        for mode in sorted(modes, key=MODES.index):
            build_mode = functools.partial(build, scene, prior, device, mode, tiny)
            measure_mode(mode, plan(mode, resolutions, chunks), build_mode, args, short_side, out_of_time, report)
            gc.collect()  # this mode's pipeline is freed before the next is built
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(report.text())
    return 0


def _short_side(scene: Path) -> int:
    from PIL import Image

    frame = json.loads((scene / "transforms.json").read_text())["frames"][0]
    with Image.open(scene / frame["file_path"]) as image:
        return min(image.size)


if __name__ == "__main__":
    sys.exit(main())
