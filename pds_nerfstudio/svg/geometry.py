"""From a drawing's Bezier segments to the closed outlines that the rasteriser fills: straight edges, in plain torch,
differentiable in the control points and the stroke widths.

Curves are flattened into chords, as many per segment as keep the chord within ``tolerance`` pixels of the curve
(the count is read from the detached points at each render: the bound max|B''| / (8 n^2) of a uniformly split
cubic). A fill is the set of chords of every contour, each contour closed (SVG fills an open subpath as if
closed). A stroke is the outline of the pen swept along each contour: the chords offset by half the width on both
sides (one side forward, the other backward), joined at every vertex (the SVG join on the outer side of a corner,
a miter between the chords of one curve, the inner side through the crossing of the two offset chords) and capped at the ends of open
contours. Every outline is a set of directed edges that form closed loops, traced so that the stroke's body has
the same winding sign everywhere: where the outline overlaps itself (a path crossing itself, the inside of a
corner whose chords are shorter than the width) the winding is 2, which the nonzero rule reads as covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from pds_nerfstudio.svg.scene import CAPS, JOINS, LINE, QUADRATIC, VectorScene

DEFAULT_TOLERANCE = 0.05
"""Largest distance in pixels between a curve and its chords."""
MAX_CHORDS = 256
"""Most chords per segment."""
MAX_ARC_EDGES = 64
"""Most edges of a round join or cap (a half turn); every connector has as many (the others repeat points:
zero-length edges add nothing)."""
_EPS = 1e-9


@dataclass
class Polylines:
    """Flattened contours: each contour's vertices consecutive, in drawing order."""

    vertices: Float[Tensor, "num_vertices 2"]
    contour: Int[Tensor, "num_vertices"]
    """The contour of each vertex."""
    corner: Bool[Tensor, "num_vertices"]
    """The vertex starts or ends an SVG segment (joins there follow the SVG join; inside a curve, a miter)."""
    contour_closed: Bool[Tensor, "num_contours"]
    contour_shape: Int[Tensor, "num_contours"]


@dataclass
class Outline:
    """Directed edges whose loops bound what a layer covers."""

    edges: Float[Tensor, "num_edges 2 2"]
    """(start, end) of each edge, pixels."""
    layer: Int[Tensor, "num_edges"]
    """The layer (a shape's fill or stroke) each edge belongs to."""


def cubic_controls(
    points: Float[Tensor, "num_points 2"], segment_points: Int[Tensor, "num_segments 4"], segment_kind: Int[Tensor, "num_segments"]
) -> Float[Tensor, "num_segments 4 2"]:
    """Every segment as a cubic: a line's controls at a third and two thirds, a quadratic degree-elevated."""
    p = points[segment_points]
    start, end, second = p[:, 0], p[:, 3], p[:, 1]
    kind = segment_kind[:, None]
    c1 = torch.where(kind == LINE, start + (end - start) / 3, torch.where(kind == QUADRATIC, start + 2 / 3 * (second - start), second))
    c2 = torch.where(kind == LINE, start + 2 * (end - start) / 3, torch.where(kind == QUADRATIC, end + 2 / 3 * (second - end), p[:, 2]))
    return torch.stack([start, c1, c2, end], dim=1)


def chord_counts(controls: Float[Tensor, "num_segments 4 2"], segment_kind: Int[Tensor, "num_segments"],
                 tolerance: float) -> Int[Tensor, "num_segments"]:
    """Chords per segment so that each stays within `tolerance` of the curve: n >= sqrt(max|B''| / (8 tol))."""
    c = controls.detach()
    second = torch.stack([c[:, 0] - 2 * c[:, 1] + c[:, 2], c[:, 1] - 2 * c[:, 2] + c[:, 3]], dim=1).norm(dim=-1)
    bound = 6 * second.amax(dim=1)
    counts = torch.ceil(torch.sqrt(bound / (8 * tolerance))).clamp(1, MAX_CHORDS).long()
    return torch.where(segment_kind == LINE, torch.ones_like(counts), counts)


def _bezier(controls: Float[Tensor, "n 4 2"], t: Float[Tensor, "n"]) -> Float[Tensor, "n 2"]:
    s = (1 - t)[:, None]
    t = t[:, None]
    return (s**3) * controls[:, 0] + 3 * s * s * t * controls[:, 1] + 3 * s * t * t * controls[:, 2] + t**3 * controls[:, 3]


def flatten(scene: VectorScene, points: Float[Tensor, "num_points 2"], tolerance: float = DEFAULT_TOLERANCE) -> Polylines:
    """The contours of `scene` with control points `points` (the scene's, scaled to the render) as chords."""
    controls = cubic_controls(points, scene.segment_points, scene.segment_kind)
    counts = chord_counts(controls, scene.segment_kind, tolerance)
    num_segments = counts.shape[0]
    # An open contour also keeps its last segment's end point.
    contour = scene.segment_contour
    is_last = torch.ones(num_segments, dtype=torch.bool, device=contour.device)
    if num_segments > 1:
        is_last[:-1] = contour[1:] != contour[:-1]
    extra = (is_last & ~scene.contour_closed[contour]).long()
    per_segment = counts + extra
    segment = torch.repeat_interleave(torch.arange(num_segments, device=contour.device), per_segment)
    offsets = torch.cumsum(per_segment, 0) - per_segment
    k = torch.arange(segment.shape[0], device=contour.device) - offsets[segment]
    t = (k.to(points.dtype) / counts[segment].to(points.dtype)).clamp(max=1.0)
    vertices = _bezier(controls[segment], t)
    corner = (k == 0) | (k == counts[segment])
    return Polylines(vertices, contour[segment], corner, scene.contour_closed, scene.contour_shape)


@dataclass
class _Chain:
    """Neighbours along the contours: for each vertex the next and previous one, and which edges and joins exist."""

    next: Int[Tensor, "n"]
    prev: Int[Tensor, "n"]
    first: Bool[Tensor, "n"]
    last: Bool[Tensor, "n"]
    edge: Bool[Tensor, "n"]
    """An edge leaves this vertex (towards `next`)."""


def _chain(contour: Int[Tensor, "n"], closed: Bool[Tensor, "n"], num_contours: int, min_length: int) -> _Chain:
    """Neighbours of vertices grouped by contour; `closed` per vertex (its contour's); contours shorter than
    `min_length` vertices get no edges."""
    n = contour.shape[0]
    index = torch.arange(n, device=contour.device)
    length = torch.bincount(contour, minlength=num_contours)
    start = torch.cumsum(length, 0) - length
    first = index == start[contour]
    last = index == start[contour] + length[contour] - 1
    nxt = torch.where(last, start[contour], index + 1)
    prev = torch.where(first, start[contour] + length[contour] - 1, index - 1)
    edge = (~last | closed) & (length[contour] >= min_length)
    return _Chain(nxt, prev, first, last, edge)


def fill_outline(lines: Polylines, layer_of_shape: Int[Tensor, "num_shapes"]) -> Outline:
    """Every contour's chords, each contour closed; edges of shapes without a fill layer (-1) dropped."""
    num_contours = lines.contour_shape.shape[0]
    chain = _chain(lines.contour, torch.ones_like(lines.corner), num_contours, min_length=2)
    layer = layer_of_shape[lines.contour_shape[lines.contour]]
    keep = chain.edge & (layer >= 0)
    edges = torch.stack([lines.vertices, lines.vertices[chain.next]], dim=1)[keep]
    return Outline(edges, layer[keep])


def _dedupe(lines: Polylines) -> Polylines:
    """Drop vertices equal to the one before them in their contour (a zero-length chord has no direction)."""
    num_contours = lines.contour_shape.shape[0]
    closed = lines.contour_closed[lines.contour]
    chain = _chain(lines.contour, closed, num_contours, min_length=1)
    step = (lines.vertices - lines.vertices[chain.prev]).detach().abs().amax(dim=-1)
    keep = (step > _EPS) | (chain.first & ~closed)
    return Polylines(lines.vertices[keep], lines.contour[keep], lines.corner[keep], lines.contour_closed, lines.contour_shape)


def _rotate(v: Float[Tensor, "n 2"], angle: Float[Tensor, "n"]) -> Float[Tensor, "n 2"]:
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([cos * v[:, 0] - sin * v[:, 1], sin * v[:, 0] + cos * v[:, 1]], dim=-1)


def arc_edges(largest_half_width: float, tolerance: float) -> int:
    """Edges of a half turn of radius `largest_half_width` whose chords stay within `tolerance` of the arc
    (r (1 - cos(pi / 2k)) <= tol), even, at least 4."""
    if largest_half_width <= tolerance:
        return 4
    count = math.ceil(math.pi / (2 * math.acos(1 - tolerance / largest_half_width)))
    return int(min(max(count + count % 2, 4), MAX_ARC_EDGES))


def _arc(centre: Tensor, radius: Tensor, start: Tensor, sweep: Tensor, edges: int) -> Float[Tensor, "n k+1 2"]:
    """`edges` + 1 points on the circle about `centre` from direction `start`, turning by `sweep` radians."""
    steps = torch.linspace(0, 1, edges + 1, device=centre.device, dtype=centre.dtype)
    directions = torch.stack([_rotate(start, sweep * s) for s in steps], dim=1)
    return centre[:, None] + radius[:, None, None] * directions


def _via(a: Tensor, middle: Tensor, b: Tensor, edges: int) -> Float[Tensor, "n k+1 2"]:
    """a, then `middle` repeated, then b: the connector a -> middle -> b as `edges` + 1 points."""
    return torch.stack([a] + [middle] * (edges - 1) + [b], dim=1)


def _edges_of(chains: Float[Tensor, "n k 2"]) -> Float[Tensor, "n*(k-1) 2 2"]:
    return torch.stack([chains[:, :-1], chains[:, 1:]], dim=2).reshape(-1, 2, 2)


def stroke_outline(
    lines: Polylines,
    half_width: Float[Tensor, "num_shapes"],
    linecap: Int[Tensor, "num_shapes"],
    linejoin: Int[Tensor, "num_shapes"],
    miterlimit: Float[Tensor, "num_shapes"],
    layer_of_shape: Int[Tensor, "num_shapes"],
    tolerance: float = DEFAULT_TOLERANCE,
) -> Outline:
    """The outline of the pen (a segment of `2 half_width` across the path) swept along every contour of a shape
    with a stroke layer (see the module docstring)."""
    lines = _dedupe(lines)
    shape = lines.contour_shape[lines.contour]
    stroked = layer_of_shape[shape] >= 0
    lines = Polylines(lines.vertices[stroked], lines.contour[stroked], lines.corner[stroked], lines.contour_closed,
                      lines.contour_shape)  # fmt: skip
    shape = shape[stroked]
    v = lines.vertices
    num_contours = lines.contour_shape.shape[0]
    closed = lines.contour_closed[lines.contour]
    chain = _chain(lines.contour, closed, num_contours, min_length=2)
    h = half_width[shape]
    edges = arc_edges(float(h.detach().max()) if h.numel() else 0.0, tolerance)
    direction = v[chain.next] - v
    length = direction.norm(dim=-1, keepdim=True)
    unit = direction / torch.where(chain.edge[:, None], length.clamp_min(_EPS), torch.ones_like(length))
    normal = torch.stack([-unit[:, 1], unit[:, 0]], dim=-1)
    offset = normal * h[:, None]

    pieces, layers = [], []
    e = chain.edge
    pieces.append(torch.stack([v[e] + offset[e], v[chain.next][e] + offset[e]], dim=1))
    pieces.append(torch.stack([v[chain.next][e] - offset[e], v[e] - offset[e]], dim=1))
    layers += [layer_of_shape[shape[e]]] * 2

    # Joins: between the edge that arrives at vertex j (from prev[j]) and the one that leaves it.
    j = chain.edge & chain.edge[chain.prev]
    if j.any():
        vj, hj, sj = v[j], h[j], shape[j]
        n0, n1 = normal[chain.prev][j], normal[j]
        u0, u1 = unit[chain.prev][j], unit[j]
        turn = u0[:, 0] * u1[:, 1] - u0[:, 1] * u1[:, 0]  # > 0: the +normal side is inside the corner
        cos = (n0 * n1).sum(-1)
        angle = torch.atan2(n0[:, 0] * n1[:, 1] - n0[:, 1] * n1[:, 0], cos)
        join = torch.where(lines.corner[j], linejoin[sj], torch.zeros_like(sj))  # inside a curve: miter
        within_limit = 2.0 <= miterlimit[sj] ** 2 * (1 + cos)  # 1 / cos(theta / 2) <= limit
        # The inner offset lines cross at h tan(theta / 2) along both chords from the vertex: where both chords are
        # that long, the inner side goes through the crossing (the offset chords' overshoot past it is traced back
        # along itself and adds nothing), so the outline is the stroke's boundary; else through the vertex.
        along = hj * (n0[:, 0] * n1[:, 1] - n0[:, 1] * n1[:, 0]).abs() / (1 + cos).clamp_min(_EPS)
        shortest = torch.minimum(length[chain.prev][j, 0], length[j, 0]).detach()
        inner_crossing = (along.detach() <= shortest) & (cos > -0.99)
        for side in (1.0, -1.0):
            a, b = vj + side * n0 * hj[:, None], vj + side * n1 * hj[:, None]
            crossing = vj + side * hj[:, None] * (n0 + n1) / (1 + cos).clamp_min(_EPS)[:, None]
            outer = (turn * side) < 0
            use_miter = (join == JOINS.index("miter")) & within_limit & outer
            inner = torch.where(inner_crossing[:, None], crossing, vj)
            middle = torch.where(use_miter[:, None], crossing, torch.where(outer[:, None], (a + b) / 2, inner))
            chains = _via(a, middle, b, edges)
            rounded = (join == JOINS.index("round")) & outer
            if rounded.any():
                arc = _arc(vj[rounded], hj[rounded], side * n0[rounded], angle[rounded], edges)
                chains = chains.clone()
                chains[rounded] = arc
            if side < 0:  # the -normal side is traced backward
                chains = chains.flip(1)
            pieces.append(_edges_of(chains))
            layers.append(layer_of_shape[sj].repeat_interleave(edges))

    # Caps of open contours: from the -normal side to the +normal side at the start, back at the end.
    for at_start in (True, False):
        c = (chain.first if at_start else chain.last) & ~closed
        c = c & (chain.edge if at_start else chain.edge[chain.prev])
        if not c.any():
            continue
        edge_of = torch.nonzero(c).squeeze(1) if at_start else chain.prev[c]
        vc, hc, sc = v[c], h[c], shape[c]
        n, u = normal[edge_of], unit[edge_of]
        outward = -u if at_start else u
        a = vc - n * hc[:, None] if at_start else vc + n * hc[:, None]
        b = vc + n * hc[:, None] if at_start else vc - n * hc[:, None]
        cap = linecap[sc]
        ext = outward * hc[:, None]
        square = torch.stack([a] + [a + ext] * (edges // 2) + [b + ext] * (edges // 2 - 1) + [b], dim=1)
        butt = _via(a, a, b, edges)
        chains = torch.where((cap == CAPS.index("square"))[:, None, None], square, butt)
        rounded = cap == CAPS.index("round")
        if rounded.any():
            sweep = torch.full_like(hc[rounded], math.pi if at_start else -math.pi)
            start = -n[rounded] if at_start else n[rounded]
            # From a to b around the outward side: a half turn whose sign makes it pass through `outward`.
            chains = chains.clone()
            chains[rounded] = _arc(vc[rounded], hc[rounded], start, _outward_sweep(start, outward[rounded], sweep), edges)
        pieces.append(_edges_of(chains))
        layers.append(layer_of_shape[sc].repeat_interleave(edges))
    if not pieces:
        return Outline(v.new_zeros(0, 2, 2), torch.zeros(0, dtype=torch.long, device=v.device))
    return Outline(torch.cat(pieces), torch.cat(layers))


def _outward_sweep(start: Tensor, outward: Tensor, sweep: Tensor) -> Tensor:
    """A half turn from `start` whose midpoint direction is `outward`: +pi or -pi."""
    quarter = _rotate(start, sweep / 2)
    return torch.where((quarter * outward).sum(-1) >= 0, sweep, -sweep)
