"""Do a toy prior's own samples read as their captions? The fraction of samples whose colours are the caption's.

    python -m pds_nerfstudio.measure.prior_colours PRIOR_DIR [--samples 4] [--pairs 24] [--grid samples.png]

Samples every one-shape caption (and `--pairs` random two-shape captions) with diffusers' own
``StableDiffusionPipeline`` (DDIM, 50 steps, guidance 5, as the toy prior's samples.png). A one-shape sample reads
as its caption when the most common palette colour of the pixels that differ from its background (the median of
its border) is the caption's, each pixel read by the fidelity matrix's colour rule; a two-shape sample, when each
of its two colours covers at least 2% of the image (which shape wears which colour is not measured).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

from pds_nerfstudio.measure.fidelity_measures import colour_distances
from pds_nerfstudio.synthetic.procedural_scene import PALETTE

NAMES = list(PALETTE)
COLOURS = np.array([PALETTE[name] for name in NAMES])


RULES = ("cielab", "rgb")
"""cielab: the fidelity matrix's rule (:func:`~pds_nerfstudio.measure.fidelity_measures.nearest_colour`, lightness at
half weight); rgb: the Euclidean distance in RGB, this measure's rule before 2026-12-07. The toy priors' VAE draws
every colour about 15% darker than it was trained on, which the RGB rule reads as another colour (most of the vector
prior's orange as red)."""


def palette_labels(image: np.ndarray, rule: str = "cielab") -> np.ndarray:
    """Each pixel's nearest palette colour (index into NAMES) by ``rule`` (:data:`RULES`); image (H, W, 3) in [0, 1]."""
    if rule == "rgb":
        return np.linalg.norm(image[..., None, :] - COLOURS, axis=-1).argmin(-1)
    return colour_distances(image, COLOURS).argmin(-1)


def foreground(image: np.ndarray, threshold: float = 0.12) -> np.ndarray:
    """Pixels farther than `threshold` (RGB distance) from the background, the median colour of the border."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.linalg.norm(image - np.median(border, axis=0), axis=-1) > threshold


def reads_as_single(image: np.ndarray, colour: str, rule: str = "cielab") -> bool:
    mask = foreground(image)
    if mask.sum() < 0.02 * mask.size:
        return False
    counts = np.bincount(palette_labels(image, rule)[mask], minlength=len(NAMES))
    return NAMES[int(counts.argmax())] == colour


def reads_as_pair(image: np.ndarray, colours: tuple[str, str], rule: str = "cielab") -> bool:
    labels = palette_labels(image, rule)[foreground(image)]
    return all((labels == NAMES.index(c)).sum() >= 0.02 * image.shape[0] * image.shape[1] for c in colours)


@torch.no_grad()
def sample(prior_dir: Path, prompts: list[str], seed: int = 0, batch: int = 48) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(prior_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generator = torch.Generator().manual_seed(seed)
    images = [pipe(prompts[i : i + batch], height=size, width=size, num_inference_steps=50, guidance_scale=5.0,
                   generator=generator, output_type="np").images for i in range(0, len(prompts), batch)]  # fmt: skip
    return np.concatenate(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fraction of a toy vector prior's samples that read as their captions.")
    parser.add_argument("prior_dir", type=Path)
    parser.add_argument("--samples", type=int, default=4, help="samples per one-shape caption")
    parser.add_argument("--pairs", type=int, default=24, help="random two-shape captions, one sample each")
    parser.add_argument("--grid", type=Path, default=None, help="also write the pair samples as one PNG")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from pds_nerfstudio.synthetic.vector_prior import VectorPriorRecipe

    recipe = VectorPriorRecipe()
    singles = [(c, s) for c in recipe.colours for s in recipe.shapes for _ in range(args.samples)]
    pairs = random.Random(args.seed).sample(recipe.pairs(), args.pairs)
    prompts = [f"a {c} {s}" for c, s in singles] + [f"a {c1} {s1} and a {c2} {s2}" for c1, s1, c2, s2 in pairs]
    images = sample(args.prior_dir, prompts, args.seed)
    for rule in RULES:
        single_hits = [reads_as_single(image, c, rule) for image, (c, _) in zip(images, singles)]
        pair_hits = [reads_as_pair(image, (p[0], p[2]), rule) for image, p in zip(images[len(singles):], pairs)]
        by_colour = {c: np.mean([h for h, (cc, _) in zip(single_hits, singles) if cc == c]) for c in recipe.colours}
        print(f"{rule} rule:" if rule == "rgb" else f"{rule} rule (the fidelity matrix's):")
        print(f"  one shape: {sum(single_hits)} of {len(single_hits)} samples read as their caption's colour "
              f"({100 * np.mean(single_hits):.0f}%)")  # fmt: skip
        print("    by colour: " + ", ".join(f"{c} {100 * v:.0f}%" for c, v in by_colour.items()))
        print(f"  two shapes: {sum(pair_hits)} of {len(pair_hits)} samples show both caption colours "
              f"({100 * np.mean(pair_hits):.0f}%)")  # fmt: skip
    if args.grid:
        from PIL import Image

        tiles = (images[len(singles):] * 255).round().clip(0, 255).astype(np.uint8)
        rows = [np.concatenate(list(tiles[i : i + 8]), axis=1) for i in range(0, len(tiles) - len(tiles) % 8, 8)]
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.grid)
        print(f"wrote {args.grid}: " + "; ".join(f"a {c1} {s1} and a {c2} {s2}" for c1, s1, c2, s2 in pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
