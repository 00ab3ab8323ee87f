"""Flat vector drawings with known answers: filled circles, squares and rectangles of named colours on a plain
background, as SVG text. The toy vector prior is trained on their renders (:mod:`vector_prior`) and the SVG edit
matrix edits them (:mod:`pds_nerfstudio.measure.svg_matrix`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pds_nerfstudio.synthetic.procedural_scene import PALETTE

FLAT_SHAPES: tuple[str, ...] = ("circle", "square", "rectangle")
WHITE = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class FlatShape:
    """One filled shape on a canvas of side 1: its colour name, kind, centre and size."""

    colour: str
    shape: str
    centre: tuple[float, float]
    size: float
    """Circle: diameter; square: side; rectangle: its long side."""
    aspect: float = 1.0
    """Rectangle: long side / short side (> 1)."""
    vertical: bool = False
    """Rectangle: the long side is vertical."""
    rgb: tuple[float, float, float] | None = None
    """The fill (None: the palette's colour)."""

    @property
    def fill(self) -> tuple[float, float, float]:
        return self.rgb if self.rgb is not None else PALETTE[self.colour]

    def element(self, canvas: float, element_id: str | None = None) -> str:
        """The SVG element of the shape on a canvas of side `canvas`."""
        cx, cy = self.centre[0] * canvas, self.centre[1] * canvas
        fill = "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02x}" for c in self.fill)
        ident = f' id="{element_id}"' if element_id else ""
        if self.shape == "circle":
            return f'<circle{ident} cx="{cx:.2f}" cy="{cy:.2f}" r="{self.size * canvas / 2:.2f}" fill="{fill}"/>'
        width = height = self.size * canvas
        if self.shape == "rectangle":
            short = self.size * canvas / self.aspect
            width, height = (short, width) if self.vertical else (width, short)
        return (f'<rect{ident} x="{cx - width / 2:.2f}" y="{cy - height / 2:.2f}" width="{width:.2f}" '
                f'height="{height:.2f}" fill="{fill}"/>')  # fmt: skip


def caption_of(shapes: tuple[FlatShape, ...]) -> str:
    """"a red circle", or "a red circle and a blue square" (in the drawing's order)."""
    return " and ".join(f"a {s.colour} {s.shape}" for s in shapes)


def drawing_svg(shapes: tuple[FlatShape, ...], canvas: float = 256.0,
                background: tuple[float, float, float] = WHITE, ids: tuple[str, ...] | None = None) -> str:
    """An SVG document: a background rectangle (left out when white: the canvas composites on white) and the
    shapes in order."""
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{canvas:g}" height="{canvas:g}" '
             f'viewBox="0 0 {canvas:g} {canvas:g}">']  # fmt: skip
    if tuple(background) != WHITE:
        fill = "#" + "".join(f"{round(c * 255):02x}" for c in background)
        parts.append(f'<rect id="background" width="{canvas:g}" height="{canvas:g}" fill="{fill}"/>')
    for index, shape in enumerate(shapes):
        parts.append(shape.element(canvas, ids[index] if ids else None))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def random_shape(rng: np.random.Generator, colour: str, shape: str, scale: float, centre: tuple[float, float],
                 jitter: float) -> FlatShape:
    """A shape of `colour` and kind `shape` near `centre`, its size drawn for a slot of relative size `scale`, its
    colour jittered by up to `jitter` per channel."""
    rgb = tuple(float(np.clip(c + rng.uniform(-jitter, jitter), 0, 1)) for c in PALETTE[colour])
    if shape == "circle":
        size, aspect = rng.uniform(0.4, 0.65) * scale, 1.0
    elif shape == "square":
        size, aspect = rng.uniform(0.35, 0.55) * scale, 1.0
    else:
        size, aspect = rng.uniform(0.55, 0.8) * scale, rng.uniform(1.9, 2.6)
    return FlatShape(colour, shape, centre, float(size), float(aspect), bool(rng.random() < 0.5), rgb)  # type: ignore[arg-type]


def random_drawing(rng: np.random.Generator, colours: tuple[str, ...], shapes: tuple[str, ...], count: int,
                   jitter: float = 0.04) -> tuple[tuple[FlatShape, ...], tuple[float, float, float]]:
    """`count` (1 or 2) shapes of the given colours and kinds, side by side when two, on a white (60%) or pale
    background."""
    if count == 1:
        centre = tuple(float(c) for c in 0.5 + rng.uniform(-0.1, 0.1, 2))
        drawn = (random_shape(rng, colours[0], shapes[0], 1.0, centre, jitter),)  # type: ignore[arg-type]
    else:
        horizontal = rng.random() < 0.5
        offsets = ((0.27, 0.5), (0.73, 0.5)) if horizontal else ((0.5, 0.27), (0.5, 0.73))
        drawn = tuple(
            random_shape(rng, colours[i], shapes[i], 0.5, tuple(float(o + rng.uniform(-0.04, 0.04)) for o in offsets[i]), jitter)  # type: ignore[arg-type]
            for i in range(2)
        )
    background = WHITE if rng.random() < 0.6 else tuple(float(c) for c in rng.uniform(0.82, 1.0, 3))
    return drawn, background  # type: ignore[return-value]
