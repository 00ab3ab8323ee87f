"""Train the toy text-conditional prior (a small Stable Diffusion pipeline) on procedural renders, or with
``--kind vector`` the toy vector prior on flat drawings of circles, squares and rectangles.

    python scripts/train_toy_prior.py OUT_DIR [--kind scenes|vector] [--seed N] [--vae-steps N] [--unet-steps N]
                                      [--overwrite] [--samples samples.png]

About 20 minutes on 2 CPU cores with the defaults (the recipe of the prior embedded in the package,
pds_nerfstudio/assets/toy_prior; with --kind vector, of pds_nerfstudio/assets/toy_vector_prior). OUT_DIR loads like any Stable Diffusion folder:
`ns-train pds --pipeline.prior.model-id OUT_DIR` or `StableDiffusionPipeline.from_pretrained(OUT_DIR)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, optionally sample a grid; return the exit status (2 on errors)."""
    parser = argparse.ArgumentParser(description="Train the toy text-conditional prior on procedural renders.")
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing unless --overwrite)")
    parser.add_argument("--kind", choices=("scenes", "vector"), default="scenes",
                        help="scenes: the toy prior (3D renders); vector: the toy vector prior (flat drawings)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=None, help="VAE optimiser steps (default: the recipe's)")
    parser.add_argument("--unet-steps", type=int, default=None, help="diffusion optimiser steps (default: the recipe's)")
    parser.add_argument("--layouts-per-caption", type=int, default=None, help="scenes (or one-shape drawings) per caption")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier prior in OUT_DIR")
    parser.add_argument("--samples", type=Path, default=None, help="also write a PNG grid of samples: a row per colour, columns per shape")
    args = parser.parse_args(argv)

    from dataclasses import replace

    from pds_nerfstudio.synthetic.toy_prior import ToyPriorRecipe, sample_grid, train_toy_prior

    overrides = {
        "seed": args.seed,
        "vae_steps": args.vae_steps,
        "unet_steps": args.unet_steps,
        "layouts_per_caption": args.layouts_per_caption,
    }
    if args.kind == "vector":
        from pds_nerfstudio.synthetic.vector_prior import VectorPriorRecipe

        base: ToyPriorRecipe = VectorPriorRecipe()
        overrides["drawings_per_caption"] = overrides.pop("layouts_per_caption")
    else:
        base = ToyPriorRecipe()
    recipe = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    try:
        out_dir = train_toy_prior(args.out_dir, recipe, overwrite=args.overwrite, log=lambda m: print(m, flush=True))
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if args.samples:
        sample_grid(out_dir, recipe.colours, recipe.shapes, args.samples)
        print(f"wrote {args.samples}")
    total = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    print(f"prior folder: {out_dir} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
