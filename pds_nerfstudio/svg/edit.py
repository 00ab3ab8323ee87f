"""Edit a drawing with the guidance of ``pds_nerfstudio.guidance``: its control points, colours (and optionally stroke
widths) optimised so that its render moves toward the target prompt.

Each step renders the drawing over white at the prior's input size (the rasteriser's coverage is exact, so no
supersampling), encodes it (with gradient), asks the one guidance call of :class:`GuidanceOptions` for PDS, SDS or
DDS's gradient on the latent against the source drawing's latent, back-propagates it through the encoder and the
rasteriser, and takes one Adam step per parameter group (the authors': points and colours, each its own rate);
colours are then clipped to [0, 1] and widths to >= 0, as the authors clip theirs after every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from pds_nerfstudio.guidance import surrogate_loss
from pds_nerfstudio.guidance.options import GuidanceOptions, GuidancePrior
from pds_nerfstudio.svg.rasterizer import render
from pds_nerfstudio.svg.scene import VectorScene

Parameter = Literal["points", "colours", "widths"]
REFERENCE_CANVAS = 512.0
"""Point rates are in pixels of a canvas of this side (Stable Diffusion's image side): a drawing of another size
moves by the same fraction of itself."""


@dataclass(frozen=True)
class Optimisation:
    """What is optimised and how fast."""

    optimise: tuple[Parameter, ...] = ("points", "colours")
    steps: int = 1000
    point_lr: float = 0.8
    colour_lr: float = 0.01
    width_lr: float = 0.1


class EncodingPrior(GuidancePrior):
    """A guidance prior that also encodes images (the Stable Diffusion prior)."""

    def encode(self, images: Float[Tensor, "batch 3 h w"]) -> Float[Tensor, "batch 4 hl wl"]: ...


def prior_view(scene: VectorScene, size: tuple[int, int]) -> Float[Tensor, "1 3 h w"]:
    """The drawing as the prior sees it: the whole canvas at `size` (height, width), over white."""
    return render(scene, size[0], size[1])[None]


def edit_drawing(
    source: VectorScene,
    prior: EncodingPrior,
    guidance: GuidanceOptions,
    optimisation: Optimisation,
    size: tuple[int, int],
    generator: torch.Generator,
    on_step: Callable[[int], None] | None = None,
) -> VectorScene:
    """The edited drawing (detached; `source` is not changed). `size` is the prior's input (height, width)."""
    scale = max(source.width, source.height) / REFERENCE_CANVAS
    points = source.points.detach().clone().requires_grad_("points" in optimisation.optimise)
    fill = source.fill_colour.detach().clone().requires_grad_("colours" in optimisation.optimise)
    stroke = source.stroke_colour.detach().clone().requires_grad_("colours" in optimisation.optimise)
    width = source.stroke_width.detach().clone().requires_grad_("widths" in optimisation.optimise)
    optimisers = []
    if "points" in optimisation.optimise:
        optimisers.append(torch.optim.Adam([points], lr=optimisation.point_lr * scale))
    if "colours" in optimisation.optimise:
        optimisers.append(torch.optim.Adam([fill, stroke], lr=optimisation.colour_lr))
    if "widths" in optimisation.optimise:
        optimisers.append(torch.optim.Adam([width], lr=optimisation.width_lr * scale))
    with torch.no_grad():
        x0_src = prior.encode(prior_view(source, size))
    for step in range(optimisation.steps):
        current = source.with_parameters(points=points, fill_colour=fill, stroke_colour=stroke, stroke_width=width)
        x0_tgt = prior.encode(prior_view(current, size))
        output = guidance.guidance_gradient(prior, x0_tgt, x0_src, generator, (step, optimisation.steps))
        for optimiser in optimisers:
            optimiser.zero_grad(set_to_none=True)
        surrogate_loss(x0_tgt, output.grad).backward()
        for optimiser in optimisers:
            optimiser.step()
        with torch.no_grad():
            fill.clamp_(0, 1)
            stroke.clamp_(0, 1)
            width.clamp_(min=0)
        if on_step is not None:
            on_step(step)
    return source.with_parameters(points=points, fill_colour=fill, stroke_colour=stroke, stroke_width=width).detached()


def timed_edit(*args, **kwargs) -> tuple[VectorScene, float]:  # noqa: ANN002, ANN003
    """:func:`edit_drawing` and the seconds it took."""
    started = time.perf_counter()
    edited = edit_drawing(*args, **kwargs)
    return edited, time.perf_counter() - started
