"""A differentiable vector rasteriser in plain torch (CPU and CUDA): exact box-filtered coverage, then compositing.

How coverage is computed. A layer (a shape's fill, or its stroke) is bounded by closed loops of straight edges
(:mod:`pds_nerfstudio.svg.geometry`). The integral of the loops' winding number over a pixel's unit square is a
sum over edges (Green's theorem, as in the accumulation rasterisers of font renderers): every edge is cut where it
crosses a pixel row or column, so each piece lies in one pixel; a piece with vertical extent dy whose mean x is
xm in pixel column c adds dy (c + 1 - xm), the area between the piece and the pixel's right side, to its own
pixel, and dy to every pixel right of it in its row. Those two numbers go into a per-row difference buffer; a
cumulative sum along each row gives every pixel's winding integral W. Coverage is min(|W|, 1) under the nonzero
rule and the distance of |W| to the nearest even number under evenodd: the pixel area inside the shape, exactly,
wherever a pixel is crossed by the boundary of one region of constant winding (every pixel of a simple polygon;
near a point where boundaries cross, the integral mixes the regions). Nothing is sampled, so nothing aliases: the
result is what infinite supersampling with a box filter converges to, and it is continuous and piecewise smooth in
the edges' end points, hence in the control points and stroke widths (the cut points follow the edge: their
coordinates are computed from the end points, with gradient). The cost is one entry per piece, about the summed
length of the outlines in pixels, plus one cumulative sum per layer.

Compositing: the layers in document order (each shape's fill, then its stroke), alpha = coverage x colour alpha,
"over" one another on a background colour (white by default, as the authors' SVG edits do), in the colour space
of the file (no gamma), as SVG renderers do. :func:`composite` is one closed form (the colour of each layer times
the transmittance of the layers above it, a reversed cumulative product) with its gradient in closed form too;
:func:`composite_reference`, the plain loop of "over" operations beside it, is held to it (values and gradients)
by a test.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from pds_nerfstudio.svg.geometry import DEFAULT_TOLERANCE, Outline, fill_outline, flatten, stroke_outline
from pds_nerfstudio.svg.scene import VectorScene

WHITE = (1.0, 1.0, 1.0)


def _split_at_integers(start: Tensor, end: Tensor, axis: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cut each segment start -> end where its `axis` coordinate crosses an integer. Returns the pieces' starts,
    ends and the index of the segment each came from; the cut points are computed from the end points (with
    gradient), so each lies exactly on its grid line."""
    a0, a1 = start[:, axis].detach(), end[:, axis].detach()
    low, high = torch.minimum(a0, a1), torch.maximum(a0, a1)
    crossings = (torch.ceil(high) - torch.floor(low) - 1).clamp_min(0).long()
    source = torch.repeat_interleave(torch.arange(start.shape[0], device=start.device), crossings + 1)
    offsets = torch.cumsum(crossings + 1, 0) - (crossings + 1)
    piece = torch.arange(source.shape[0], device=start.device) - offsets[source]
    s, e = start[source], end[source]
    increasing = (a1 > a0)[source]
    delta = (e - s)[:, axis]
    safe_delta = torch.where(delta == 0, torch.ones_like(delta), delta)

    def cut(m: Tensor) -> Tensor:
        """The m-th crossing (0-based, along the segment's direction)."""
        level = torch.where(increasing, torch.floor(a0[source]) + 1 + m, torch.ceil(a0[source]) - 1 - m)
        fraction = (level.to(s.dtype) - s[:, axis]) / safe_delta
        point = s + fraction[:, None] * (e - s)
        return torch.stack([level.to(s.dtype), point[:, 1 - axis]] if axis == 0 else [point[:, 0], level.to(s.dtype)], dim=-1)

    count = crossings[source]
    piece_start = torch.where((piece == 0)[:, None], s, cut(piece - 1))
    piece_end = torch.where((piece == count)[:, None], e, cut(piece))
    return piece_start, piece_end, source


def winding_integral(
    edges: Float[Tensor, "num_edges 2 2"], layer: Int[Tensor, "num_edges"], num_layers: int, height: int, width: int
) -> Float[Tensor, "num_layers height width"]:
    """The integral of each layer's winding number over every pixel (see the module docstring); pixel (r, c) is
    the square [c, c+1] x [r, r+1]."""
    start, end, source = _split_at_integers(edges[:, 0], edges[:, 1], axis=1)
    start, end, second = _split_at_integers(start, end, axis=0)
    layer = layer[source][second]
    dy = end[:, 1] - start[:, 1]
    xm = (start[:, 0] + end[:, 0]) / 2
    row = torch.floor(((start[:, 1] + end[:, 1]) / 2).detach()).long()
    column = torch.floor(xm.detach()).long()
    keep = (row >= 0) & (row < height) & (column < width) & (dy != 0)
    dy, xm, row, column, layer = dy[keep], xm[keep], row[keep], column[keep], layer[keep]
    left = column < 0  # wholly left of the canvas: all of dy goes to every pixel of the row
    column = column.clamp_min(-1)
    xm = torch.where(left, torch.full_like(xm, -1.0), xm)
    own = dy * (column.to(dy.dtype) + 1 - xm)
    rest = dy - own
    stride = width + 2  # buffer column 0 is canvas column -1
    base = (layer * height + row) * stride + column + 1
    buffer = dy.new_zeros(num_layers * height * stride)
    buffer = buffer.index_add(0, base, own).index_add(0, base + 1, rest)
    return buffer.view(num_layers, height, stride).cumsum(-1)[..., 1 : width + 1]


def coverage_of(winding: Float[Tensor, "... h w"], evenodd: Tensor) -> Float[Tensor, "... h w"]:
    """Pixel coverage from the winding integral: min(|W|, 1) (nonzero) or the distance of |W| to the nearest even
    number (evenodd); `evenodd` broadcasts against `winding` (one flag per layer: shaped (layers, 1, 1))."""
    magnitude = winding.abs()
    nonzero = magnitude.clamp(max=1.0)
    parity = 1 - (torch.remainder(magnitude, 2.0) - 1).abs()
    return torch.where(evenodd, parity, nonzero)


def layers_of(scene: VectorScene) -> tuple[Tensor, Tensor, int]:
    """Each shape's fill layer and stroke layer (-1: none), numbered in painting order, and the layer count."""
    present = torch.stack([scene.has_fill, scene.has_stroke], dim=1).reshape(-1)
    numbers = torch.cumsum(present.long(), 0) - 1
    numbers = torch.where(present, numbers, torch.full_like(numbers, -1)).view(-1, 2)
    return numbers[:, 0], numbers[:, 1], int(present.sum())


def layer_coverage(
    scene: VectorScene, height: int, width: int, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[Float[Tensor, "num_layers height width"], Float[Tensor, "num_layers 4"]]:
    """Every layer's coverage of an image of `height` x `width` showing the whole canvas, and its RGBA colour."""
    scale = torch.tensor([width / scene.width, height / scene.height], dtype=scene.points.dtype, device=scene.device)
    points = scene.points * scale
    width_scale = math.sqrt((width / scene.width) * (height / scene.height))
    fill_layer, stroke_layer, num_layers = layers_of(scene)
    lines = flatten(scene, points, tolerance)
    fills = fill_outline(lines, fill_layer)
    strokes = stroke_outline(lines, scene.stroke_width * width_scale / 2, scene.linecap, scene.linejoin,
                             scene.miterlimit, stroke_layer, tolerance)  # fmt: skip
    outline = Outline(torch.cat([fills.edges, strokes.edges]), torch.cat([fills.layer, strokes.layer]))
    winding = winding_integral(outline.edges, outline.layer, num_layers, height, width)
    evenodd = torch.zeros(num_layers, dtype=torch.bool, device=scene.device)
    evenodd[fill_layer[scene.has_fill]] = scene.evenodd[scene.has_fill]
    colours = scene.points.new_zeros(num_layers, 4)
    colours = colours.index_put((fill_layer[scene.has_fill],), scene.fill_colour[scene.has_fill])
    colours = colours.index_put((stroke_layer[scene.has_stroke],), scene.stroke_colour[scene.has_stroke])
    return coverage_of(winding, evenodd[:, None, None]), colours


class _Over(torch.autograd.Function):
    """Layers over one another with the gradient in closed form: d image / d alpha_k = T_k (c_k - B_{k-1}), T_k the
    transmittance of the layers above k and B_{k-1} the image of the layers below it (on the background), which
    the backward pass rebuilds one layer at a time. (torch's own cumprod backward, which must allow zeros, took
    three quarters of a render's time.)"""

    @staticmethod
    def forward(ctx, alpha: Tensor, rgb: Tensor, background: Tensor) -> Tensor:  # noqa: ANN001
        through = torch.flip(torch.cumprod(torch.flip(1 - alpha, [0]), 0), [0])  # prod_{j>=k}
        above = torch.cat([through[1:], torch.ones_like(through[:1])])  # prod_{j>k}
        image = torch.einsum("khw,kc->chw", alpha * above, rgb)
        image = image + background.view(3, 1, 1) * (through[0] if through.shape[0] else torch.ones_like(image[0]))
        ctx.save_for_backward(alpha, rgb, background, above)
        return image

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        alpha, rgb, background, above = ctx.saved_tensors
        grad_alpha = torch.empty_like(alpha)
        below = background.view(3, 1, 1).expand_as(grad).clone()
        for k in range(alpha.shape[0]):
            grad_alpha[k] = above[k] * ((rgb[k].view(3, 1, 1) - below) * grad).sum(0)
            below.mul_(1 - alpha[k]).add_(rgb[k].view(3, 1, 1) * alpha[k])
        grad_rgb = torch.einsum("khw,chw->kc", alpha * above, grad)
        return grad_alpha, grad_rgb, None


def composite(
    coverage: Float[Tensor, "layers h w"], colours: Float[Tensor, "layers 4"], background: Tensor
) -> Float[Tensor, "3 h w"]:
    """Layers "over" one another in order, on `background` (RGB): sum_k c_k a_k prod_{j>k} (1 - a_j) +
    background prod_j (1 - a_j), with a_k = coverage_k x alpha_k (gradient in closed form: :class:`_Over`)."""
    return _Over.apply(coverage * colours[:, 3, None, None], colours[:, :3], background)


def composite_reference(
    coverage: Float[Tensor, "layers h w"], colours: Float[Tensor, "layers 4"], background: Tensor
) -> Float[Tensor, "3 h w"]:
    """The plain loop that :func:`composite` is held to: one "over" per layer, bottom to top."""
    image = background.view(3, 1, 1).expand(3, *coverage.shape[1:])
    for k in range(coverage.shape[0]):
        alpha = coverage[k] * colours[k, 3]
        image = image * (1 - alpha) + colours[k, :3, None, None] * alpha
    return image


def render(
    scene: VectorScene,
    height: int,
    width: int,
    background: tuple[float, float, float] | Tensor = WHITE,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Float[Tensor, "3 height width"]:
    """The drawing as an RGB image of `height` x `width` (the whole canvas, scaled), over `background`;
    differentiable in the scene's points, stroke widths and colours."""
    coverage, colours = layer_coverage(scene, height, width, tolerance)
    background = torch.as_tensor(background, dtype=scene.points.dtype, device=scene.device)
    return composite(coverage, colours, background)


def render_alpha(scene: VectorScene, height: int, width: int, tolerance: float = DEFAULT_TOLERANCE) -> Float[Tensor, "height width"]:
    """The drawing's total opacity at every pixel (1 - the product of the layers' transparencies)."""
    coverage, colours = layer_coverage(scene, height, width, tolerance)
    alpha = coverage * colours[:, 3, None, None]
    return 1 - torch.prod(1 - alpha, dim=0)
