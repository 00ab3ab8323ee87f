"""The toy vector prior: the toy prior's architecture and training (:mod:`toy_prior`) on flat vector drawings.

The toy prior knows 3D renders of coloured objects; an SVG edit needs a prior that knows flat drawings. This one is
trained on renders (by the plain-torch SVG rasteriser, 64x64) of filled circles, squares and rectangles of the 12
palette colours on a white or pale background: one shape captioned ``"a <colour> <shape>"``, or two side by side
captioned ``"a <colour> <shape> and a <colour> <shape>"`` (two different colours, in the drawing's order, left to
right or top to bottom), so that an edit can name one shape of two. Shapes vary in size, place, rectangle
proportions and orientation; colours are jittered by up to 0.04 per channel. The VAE is the toy prior's, unchanged
(phase 1 is skipped); the UNet and text encoder are trained as the toy prior's (phase 2).

The embedded copy (:data:`EMBEDDED_VECTOR_PRIOR`) is ``train_toy_prior(folder, VectorPriorRecipe())``
(``scripts/train_toy_prior.py OUT_DIR --kind vector``).
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int, UInt8
from torch import Tensor

from pds_nerfstudio.synthetic.flat_shapes import FLAT_SHAPES, caption_of, drawing_svg, random_drawing
from pds_nerfstudio.synthetic.procedural_scene import PALETTE
from pds_nerfstudio.synthetic.toy_prior import ToyPriorRecipe

EMBEDDED_VECTOR_PRIOR = Path(__file__).resolve().parents[1] / "assets" / "toy_vector_prior"


@dataclass(frozen=True)
class VectorPriorRecipe(ToyPriorRecipe):
    """The toy prior's recipe with flat drawings instead of procedural scenes."""

    shapes: tuple[str, ...] = FLAT_SHAPES
    drawings_per_caption: int = 40
    """Drawings of each one-shape caption."""
    pair_drawings: int = 1440
    """Drawings of two shapes, each of a random pair of (colour, shape) with two different colours."""
    single_only: bool = False
    """Train on one-shape drawings only."""
    vae_from: str | None = "toy_prior"
    """Take the VAE of this prior folder as it is ("toy_prior": the shipped toy prior's; its latents are tied to
    the pooled colour, which flat drawings reconstruct well) instead of training one; None: train one."""

    def __post_init__(self) -> None:
        if self.image_size % 4 or self.unet["sample_size"] * 4 != self.image_size:
            raise ValueError("image_size must be 4x the UNet's sample_size (the VAE downscales 4x)")
        unknown = [c for c in self.colours if c not in PALETTE] + [s for s in self.shapes if s not in FLAT_SHAPES]
        if unknown:
            raise ValueError(f"unknown colours or shapes {unknown}: see procedural_scene.PALETTE and flat_shapes.FLAT_SHAPES")

    def pretrained_vae(self):  # noqa: ANN201
        if self.vae_from is None:
            return None
        from diffusers import AutoencoderKL

        from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir

        folder = embedded_toy_prior_dir() if self.vae_from == "toy_prior" else Path(self.vae_from)
        return AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()

    def single_captions(self) -> list[str]:
        return [f"a {colour} {shape}" for colour in self.colours for shape in self.shapes]

    def pairs(self) -> list[tuple[str, str, str, str]]:
        """(colour, shape, colour, shape) of every two-shape caption: two different colours."""
        kinds = list(itertools.product(self.colours, self.shapes))
        return [(c1, s1, c2, s2) for (c1, s1), (c2, s2) in itertools.product(kinds, kinds) if c1 != c2]

    def captions(self) -> list[str]:
        pairs = [] if self.single_only else [f"a {c1} {s1} and a {c2} {s2}" for c1, s1, c2, s2 in self.pairs()]
        return self.single_captions() + pairs

    def training_set(self, work_dir: Path) -> tuple[UInt8[Tensor, "num 3 size size"], Int[Tensor, "num"]]:
        """Every drawing rendered at the prior's size, and its caption's index."""
        rng = np.random.default_rng(self.seed)
        index = {caption: i for i, caption in enumerate(self.captions())}
        drawings = []
        for colour in self.colours:
            for shape in self.shapes:
                drawings += [random_drawing(rng, (colour,), (shape,), 1) for _ in range(self.drawings_per_caption)]
        if not self.single_only:
            pairs = self.pairs()
            for choice in rng.integers(0, len(pairs), self.pair_drawings):
                c1, s1, c2, s2 = pairs[int(choice)]
                drawings.append(random_drawing(rng, (c1, c2), (s1, s2), 2))
        images = torch.stack([render_drawing(shapes, background, self.image_size) for shapes, background in drawings])
        labels = torch.tensor([index[caption_of(shapes)] for shapes, _ in drawings])
        return images, labels


def render_drawing(shapes, background, size: int) -> UInt8[Tensor, "3 size size"]:  # noqa: ANN001
    """A drawing rendered by the SVG rasteriser (parsed from its SVG text, as an edit reads a file), 8-bit."""
    import svgelements

    from pds_nerfstudio.svg.parse import scene_of
    from pds_nerfstudio.svg.rasterizer import render

    scene = scene_of(svgelements.SVG.parse(io.StringIO(drawing_svg(shapes, 256.0, background))), "drawing")
    with torch.no_grad():
        image = render(scene, size, size)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)
