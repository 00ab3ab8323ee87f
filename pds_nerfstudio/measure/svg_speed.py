"""How fast the plain-torch SVG rasteriser renders and back-propagates, and what supersampling would add to it.

    python scripts/svg_benchmark.py [--paths 64] [--sizes 256 512] [--repeats 3] [--threads 1]

A drawing of `--paths` random closed cubic paths (4 cubics each, filled at 0.8 opacity and stroked) on a 256-pixel
canvas, rendered at each size on the CPU (and on CUDA when there is a device): the median time of a render without
gradient, and of a render with its backward pass to the points and colours. Then the difference between a render
and the same render 4x4 supersampled (rendered at 4x the size, averaged over 4x4 blocks): the authors take 2x2
samples per pixel with diffvg; our coverage is the exact box-filter integral that supersampling converges to.
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time

import numpy as np
import torch

from pds_nerfstudio.svg.parse import scene_of
from pds_nerfstudio.svg.rasterizer import render
from pds_nerfstudio.svg.scene import VectorScene


def benchmark_drawing(num_paths: int = 64, canvas: int = 256, seed: int = 0) -> str:
    """SVG text of `num_paths` random closed blobs of 4 cubics, filled (opacity 0.8) and stroked."""
    rng = np.random.default_rng(seed)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{canvas}" height="{canvas}">']
    for _ in range(num_paths):
        cx, cy = rng.uniform(0.08, 0.92, 2) * canvas
        radius = rng.uniform(0.03, 0.16) * canvas
        points = []
        for k in range(12):
            angle = 2 * math.pi * k / 12
            r = radius * rng.uniform(0.6, 1.2)
            points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
        d = f"M{points[0][0]:.1f} {points[0][1]:.1f} " + " ".join(
            "C" + " ".join(f"{x:.1f} {y:.1f}" for x, y in (points[3 * k + 1], points[3 * k + 2], points[(3 * k + 3) % 12]))
            for k in range(4)
        ) + " Z"
        colour = "#" + "".join(f"{int(c):02x}" for c in rng.integers(0, 256, 3))
        parts.append(f'<path d="{d}" fill="{colour}" fill-opacity="0.8" stroke="#222222" '
                     f'stroke-width="{rng.uniform(0.5, 3):.1f}"/>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_render(scene: VectorScene, size: int, backward: bool, repeats: int) -> float:
    """Median seconds of a render at `size` (with its backward pass to points and colours when `backward`)."""
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        points = scene.points.clone().requires_grad_(backward)
        fill = scene.fill_colour.clone().requires_grad_(backward)
        _synchronize(scene.device)
        started = time.perf_counter()
        with torch.set_grad_enabled(backward):
            image = render(scene.with_parameters(points=points, fill_colour=fill), size, size)
            if backward:
                image.square().sum().backward()
        _synchronize(scene.device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def supersampling_difference(scene: VectorScene, size: int, factor: int = 4) -> float:
    """Mean absolute difference (per channel, 0-255) between a render and the same one `factor` x `factor`
    supersampled."""
    with torch.no_grad():
        direct = render(scene, size, size)
        sampled = torch.nn.functional.avg_pool2d(render(scene, size * factor, size * factor)[None], factor)[0]
    return float((direct - sampled).abs().mean()) * 255


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the plain-torch SVG rasteriser (forward and backward).")
    parser.add_argument("--paths", type=int, default=64, help="paths in the drawing")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="render sizes (pixels a side)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import svgelements

    scene = scene_of(svgelements.SVG.parse(io.StringIO(benchmark_drawing(args.paths))), "benchmark")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"{args.paths} paths ({int(scene.segment_kind.shape[0])} cubics, each path filled and stroked), "
          f"{args.threads} CPU thread(s), torch {torch.__version__}")  # fmt: skip
    print("| device | size | render | render + backward |")
    print("|---|---|---|---|")
    for device in devices:
        on_device = scene.to(device)
        for size in args.sizes:
            forward = time_render(on_device, size, backward=False, repeats=args.repeats)
            both = time_render(on_device, size, backward=True, repeats=args.repeats)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
            print(f"| {name} | {size}x{size} | {forward:.3f} s | {both:.3f} s |", flush=True)
    size = min(args.sizes)
    print(f"render at {size} against the same render 4x4 supersampled: mean abs. difference "
          f"{supersampling_difference(scene, size):.3f}/255")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
