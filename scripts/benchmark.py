"""Time and measure a stage-1 and a stage-2 iteration of the real `pds` pipeline, ours against the authors' call pattern.

    python scripts/benchmark.py                      # GPU: face scene (or a generated one), SD 1.5 architecture, 128/256/512
    python scripts/benchmark.py --resolutions 32 64  # CPU: tiny prior, generated scene

Modes (same scene, prior weights and seeds, in one run):
  authors: fp32 prior, one UNet call of batch 2 per branch, whole-view render with every chunk's graph kept,
           nerfstudio's hash encoding as shipped (--pipeline.fast-encoding off).
  ours:    the `pds` defaults: half-precision prior on CUDA, one batched UNet call, deferred back-propagation,
           the hash encoding under torch.compile (--pipeline.fast-encoding compile, also on CPU here; its
           compilation happens in the warm-up iterations).
  triton:  ours with the fused Triton hash encoding (--pipeline.fast-encoding triton); on the GPU only by
           default (on CPU it runs in Triton's interpreter).
Prints ms per iteration (CUDA-synchronised, warm, median), peak GPU memory, speed-up against the
baseline, the device and versions, and the projected time of a whole edit (30,000 + 15,000 iterations).
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from pds_nerfstudio.fast_encoding import encoding_in_use
from pds_nerfstudio.fixtures.procedural_scene import make_scene
from pds_nerfstudio.fixtures.tiny_prior import build_tiny_prior, default_prior_dir
from pds_nerfstudio.method_configs import pds_method
from pds_nerfstudio.pipeline import PDSPipeline
from pds_nerfstudio.stages import Stage

FACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "in2n_face"
PDS_ITERATIONS, REFINEMENT_ITERATIONS = 30000, 15000


@dataclass
class Timing:
    """One measured row; `None` fields mean the mode ran out of memory."""

    mode: str
    resolution: int
    stage1_ms: Optional[float]
    stage1_peak_gib: Optional[float]
    stage2_ms: Optional[float]
    nerfacto_ms: Optional[float]
    encoding: str = "-"
    """What computed the hash encodings (a fast path that failed to build reads "plain (... failed)")."""
    chunk: int = 0
    """Rays per chunk of the stage-1 render (0: the pipeline's default)."""


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


def build(scene: Path, prior: Path, device: torch.device, mode: str, resolution: int, short_side: int, tiny: bool,
          chunk_size: Optional[int] = None):  # fmt: skip
    """The `pds` method's pipeline and optimisers with this mode's settings."""
    from nerfstudio.engine.optimizers import Optimizers

    config = copy.deepcopy(pds_method.config.pipeline)
    if tiny:
        for name, value in TINY_MODEL.items():
            setattr(config.model, name, value)
        config.datamanager.train_num_rays_per_batch = 256
    config.datamanager.data = scene
    config.source_prompt, config.target_prompt = "a photo of a man", "a photo of a man with a clown face"
    config.reconstruction_iterations, config.pds_iterations, config.refinement_iterations = 0, 10**6, 10**6
    config.render_scale = resolution / short_side
    config.log_every = 10**9
    ours = mode != "authors"
    config.deferred_backprop = ours
    config.fast_encoding = {"authors": "off", "ours": "compile", "triton": "triton"}[mode]
    if chunk_size:
        config.render_chunk_size = chunk_size
    config.prior.model_id = str(prior)
    config.prior.device = str(device)
    config.prior.dtype = "fp16" if ours and device.type == "cuda" else "fp32"
    config.prior.batched_guidance = ours
    config.prior.channels_last = ours
    pipeline: PDSPipeline = config.setup(device=str(device), test_mode="val")
    pipeline.train()
    optimizers = Optimizers(copy.deepcopy(pds_method.config.optimizers), pipeline.get_param_groups())
    return pipeline, optimizers


def measure(scene: Path, prior: Path, device: torch.device, mode: str, resolution: int, short_side: int,
            iterations: int, warmup: int, tiny: bool, chunk_size: Optional[int] = None) -> Timing:  # fmt: skip
    """Stage-1, stage-2 and plain nerfacto iteration times of one mode at one render resolution."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    pipeline, optimizers = build(scene, prior, device, mode, resolution, short_side, tiny, chunk_size)
    autocast = torch.autocast(device_type=device.type, enabled=device.type == "cuda")  # as nerfstudio's trainer

    def train_step(loss_of: Callable[[int], dict]) -> Callable[[int], None]:
        def step(index: int) -> None:
            optimizers.zero_grad_all()
            with autocast:
                losses = loss_of(index)
            sum(losses.values()).backward()
            optimizers.optimizer_step_all()

        return step

    def pipeline_losses(step: int) -> dict:
        return pipeline.get_train_loss_dict(step)[1]

    def nerfacto_losses(step: int) -> dict:
        return super(PDSPipeline, pipeline).get_train_loss_dict(step)[1]

    pds_start = pipeline.schedule.start(Stage.PDS)
    stage1 = median_ms(train_step(pipeline_losses), range(pds_start, pds_start + warmup + iterations), warmup, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    manager = pipeline.datamanager  # stage 2 starts from the stage-1 renders; the originals stand in for them
    pipeline.stage1_renders = torch.stack([manager.original_image(v)[..., :3].cpu() for v in range(manager.num_train_images)])
    every = pipeline.config.sdedit_every
    refine_start = pipeline.schedule.start(Stage.REFINEMENT)
    blocks = range(refine_start, refine_start + every * (warmup + iterations), every)
    run_block = train_step(pipeline_losses)
    stage2 = median_ms(lambda s: [run_block(s + i) for i in range(every)], blocks, warmup, device) / every
    nerfacto = median_ms(train_step(nerfacto_losses), range(warmup + iterations), warmup, device)
    chunk = pipeline.config.render_chunk_size
    return Timing(mode, resolution, stage1, peak, stage2, nerfacto, encoding_in_use(pipeline.model), chunk)


def measure_or_oom(*args, **kwargs) -> Timing:
    """`measure`, or an "out of memory" row; either way the pipeline is freed before the next mode is measured."""
    try:
        timing = measure(*args, **kwargs)
    except torch.cuda.OutOfMemoryError:
        mode, resolution = args[3], args[4]
        timing = Timing(mode, resolution, None, None, None, None, chunk=kwargs.get("chunk_size") or 0)
    # Out of the except block, so that its traceback no longer holds the pipeline; the pipeline and
    # its hash encodings' fast forwards form reference cycles, which only the collector frees.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return timing


def table(rows: list[Timing], device: torch.device) -> str:
    """The printed report."""
    import diffusers
    import nerfstudio  # noqa: F401
    from importlib.metadata import version

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"none (CPU, {torch.get_num_threads()} threads)"
    lines = [
        f"GPU: {name} | torch {torch.__version__} | diffusers {diffusers.__version__} | nerfstudio {version('nerfstudio')}",
        f"{'render':>7} {'mode':>8} {'chunk':>6} {'stage 1 ms':>11} {'peak GiB':>9} {'speed-up':>9} {'stage 2 ms':>11} "
        f"{'nerfacto ms':>12} {'s2/nerfacto':>12} {'whole edit':>11}  encoding",
    ]
    baselines = {row.resolution: row for row in rows if row.mode == "authors"}
    for row in rows:
        if row.stage1_ms is None:
            lines.append(f"{row.resolution:>7} {row.mode:>8} {row.chunk or '-':>6} {'out of memory':>11}")
            continue
        base = baselines.get(row.resolution)
        speedup = f"{base.stage1_ms / row.stage1_ms:.2f}x" if base and base.stage1_ms else "-"
        peak = f"{row.stage1_peak_gib:.1f}" if row.stage1_peak_gib is not None else "-"
        hours = (PDS_ITERATIONS * row.stage1_ms + REFINEMENT_ITERATIONS * row.stage2_ms) / 3.6e6
        lines.append(
            f"{row.resolution:>7} {row.mode:>8} {row.chunk:>6} {row.stage1_ms:>11.1f} {peak:>9} {speedup:>9} {row.stage2_ms:>11.1f} "
            f"{row.nerfacto_ms:>12.1f} {row.stage2_ms / row.nerfacto_ms:>11.2f}x {hours:>10.2f}h  {row.encoding}"
        )
    lines.append("stage 2 ms includes its SDEdit every 10 iterations, amortised; whole edit = 30,000 x stage 1 + 15,000 x stage 2")
    return "\n".join(lines)


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
    parser.add_argument("--modes", nargs="+", default=None, choices=["authors", "ours", "triton"],
                        help="default: authors ours, and triton on the GPU")  # fmt: skip
    parser.add_argument("--render-chunk-sizes", type=int, nargs="+", default=[0],
                        help="rays per stage-1 chunk of ours and triton, one row each (--pipeline.render-chunk-size; "
                             "0: the pipeline's default); e.g. 16384 8192 4096 for the memory of smaller cards")  # fmt: skip
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--device", default=None, help="cuda or cpu; default: cuda when available")
    parser.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                        help="tiny nerfacto and a generated scene (default on CPU)")  # fmt: skip
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tiny = device.type == "cpu" if args.tiny is None else args.tiny
    resolutions = args.resolutions or ([128, 256, 512] if not tiny else [32, 64])
    modes = args.modes or (["authors", "ours", "triton"] if device.type == "cuda" else ["authors", "ours"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.scene != "auto":
            scene = Path(args.scene)
        elif FACE.is_dir() and not tiny:
            scene = FACE
        else:
            scene = workdir / "scene"
            make_scene(scene, size=64 if tiny else 512, num_views=12, objects=("red sphere", "blue cube"))
        short_side = _short_side(scene)
        prior = resolve_prior(args.prior, device, workdir)
        print(f"scene {scene} ({short_side} px), prior {prior}, device {device}", flush=True)
        rows = []
        for resolution in resolutions:
            for mode in modes:
                # the authors' way keeps every chunk's graph: its chunk size changes nothing that matters
                for chunk_size in args.render_chunk_sizes if mode != "authors" else [0]:
                    rows.append(
                        measure_or_oom(scene, prior, device, mode, resolution, short_side, args.iterations,
                                       args.warmup, tiny, chunk_size=chunk_size or None)  # fmt: skip
                    )
                    print(f"measured {mode} at {resolution} (chunk {chunk_size or 'default'})", flush=True)
    print(table(rows, device))
    return 0


def _short_side(scene: Path) -> int:
    from PIL import Image
    import json

    frame = json.loads((scene / "transforms.json").read_text())["frames"][0]
    with Image.open(scene / frame["file_path"]) as image:
        return min(image.size)


if __name__ == "__main__":
    sys.exit(main())
