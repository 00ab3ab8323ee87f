"""Render a procedural multi-view scene in nerfstudio format (numpy only, no GPU).

    python scripts/make_scene.py OUT_DIR      (or python -m pds_nerfstudio.synthetic.make_scene OUT_DIR)
        [--size 64] [--num-views 24] [--objects "red sphere" "blue cube"]
        [--seed 0] [--background gradient|plain] [--fov 50] [--elevations 20 40] [--overwrite]

Writes OUT_DIR/transforms.json, images/, masks/ (object ids), depth/ (z-depth .npy, inf = sky) and scene.json;
train on it with ``ns-train ... --data OUT_DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pds_nerfstudio.synthetic.procedural_scene import PALETTE, SHAPES, make_scene


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, render the scene and say what was written; return the exit status (2 on errors)."""
    parser = argparse.ArgumentParser(
        description="Render a procedural multi-view scene in nerfstudio format.",
        epilog=f"colours: {', '.join(PALETTE)}; shapes: {', '.join(SHAPES)}",
    )
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing unless --overwrite)")
    parser.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    parser.add_argument("--num-views", type=int, default=24, help="number of cameras on the ring")
    parser.add_argument("--objects", nargs="+", default=["red sphere"], help='e.g. "red sphere" "blue cube"')
    parser.add_argument("--seed", type=int, default=0, help="layout seed")
    parser.add_argument("--background", choices=("gradient", "plain"), default="gradient")
    parser.add_argument("--fov", type=float, default=50.0, help="field of view in degrees")
    parser.add_argument("--elevations", type=float, nargs="+", default=[20.0, 40.0], help="camera elevations, cycled")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier scene in OUT_DIR")
    args = parser.parse_args(argv)
    try:
        info = make_scene(
            args.out_dir,
            size=args.size,
            num_views=args.num_views,
            objects=args.objects,
            seed=args.seed,
            background=args.background,
            fov_deg=args.fov,
            elevations_deg=args.elevations,
            overwrite=args.overwrite,
        )
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(info.image_paths)} views of {info.size}x{info.size} to {info.out_dir}:")
    print("  transforms.json, scene.json, images/*.png, masks/*.png (object ids), depth/*.npy (z-depth, inf = sky)")
    for i, obj in enumerate(info.objects, start=1):
        centre = ", ".join(f"{c:.2f}" for c in obj.centre)
        print(f"  mask id {i}: {obj.name} at ({centre}), size {obj.size:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
