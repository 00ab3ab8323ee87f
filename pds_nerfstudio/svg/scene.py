"""The tensors of a vector drawing: control points shared by Bezier segments, grouped into contours and shapes.

A shape is one SVG element (a path, rect, circle, ...) with its fill and stroke. Its geometry is one or more
contours (subpaths), each a chain of segments; a segment is a line (2 points), a quadratic (3) or a cubic (4)
Bezier whose points are rows of ``points``, so that two segments meeting at a point share it (moving the point
moves both ends), and a closed contour's last segment ends on its first point. Coordinates are canvas pixels,
y down, every SVG transform already applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

LINE, QUADRATIC, CUBIC = 1, 2, 3
"""Segment kinds: the degree of the Bezier."""

CAPS = ("butt", "round", "square")
JOINS = ("miter", "round", "bevel")


@dataclass
class VectorScene:
    """A drawing as tensors (see the module docstring). Colours are RGBA in [0, 1], alpha already multiplied by
    the element's and its groups' opacity."""

    width: float
    """Canvas width in pixels."""
    height: float
    """Canvas height in pixels."""
    points: Float[Tensor, "num_points 2"]
    """Every control point, canvas pixels."""
    segment_points: Int[Tensor, "num_segments 4"]
    """Rows of ``points`` of each segment: start, controls, end; a line uses columns 0 and 3, a quadratic 0, 1, 3
    (the unused ones repeat the start)."""
    segment_kind: Int[Tensor, "num_segments"]
    """LINE, QUADRATIC or CUBIC."""
    segment_contour: Int[Tensor, "num_segments"]
    """The contour of each segment; a contour's segments are consecutive, in drawing order."""
    contour_shape: Int[Tensor, "num_contours"]
    """The shape of each contour; a shape's contours are consecutive."""
    contour_closed: Bool[Tensor, "num_contours"]
    """Closed by Z (or a closed element): the last segment ends on the first point, and strokes join there."""
    fill_colour: Float[Tensor, "num_shapes 4"]
    stroke_colour: Float[Tensor, "num_shapes 4"]
    stroke_width: Float[Tensor, "num_shapes"]
    has_fill: Bool[Tensor, "num_shapes"]
    """False for fill="none"."""
    has_stroke: Bool[Tensor, "num_shapes"]
    """False for stroke="none" or a zero width."""
    evenodd: Bool[Tensor, "num_shapes"]
    """Fill rule evenodd (else nonzero)."""
    linecap: Int[Tensor, "num_shapes"]
    """Index into CAPS."""
    linejoin: Int[Tensor, "num_shapes"]
    """Index into JOINS."""
    miterlimit: Float[Tensor, "num_shapes"]
    ids: list[str | None] = field(default_factory=list)
    """Each shape's SVG id, written back to the edited file."""
    tags: list[str] = field(default_factory=list)
    """Each shape's SVG element name (path, rect, ...), for messages."""

    @property
    def num_shapes(self) -> int:
        return int(self.fill_colour.shape[0])

    @property
    def device(self) -> torch.device:
        return self.points.device

    def with_parameters(
        self,
        points: Tensor | None = None,
        fill_colour: Tensor | None = None,
        stroke_colour: Tensor | None = None,
        stroke_width: Tensor | None = None,
    ) -> VectorScene:
        """The same drawing with some of its optimisable tensors replaced (the rest shared)."""
        changes = {"points": points, "fill_colour": fill_colour, "stroke_colour": stroke_colour,
                   "stroke_width": stroke_width}  # fmt: skip
        return replace(self, **{name: value for name, value in changes.items() if value is not None})

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> VectorScene:
        """Every tensor on `device`; the floating ones also in `dtype` when given."""
        def move(value: Tensor) -> Tensor:
            if value.is_floating_point() and dtype is not None:
                return value.to(device=device, dtype=dtype)
            return value.to(device)

        return replace(self, **{name: move(value) for name, value in vars(self).items() if isinstance(value, Tensor)})

    def detached(self) -> VectorScene:
        """A copy whose tensors are detached clones (a snapshot that later optimiser steps do not change)."""
        return replace(self, **{name: value.detach().clone() for name, value in vars(self).items()
                                if isinstance(value, Tensor)})  # fmt: skip
