"""Read an SVG file (svgelements: XML, CSS styles, units, transforms, <use>) into a :class:`VectorScene`.

Paths (M L H V C S Q T A Z), rect (rounded too), circle, ellipse, line, polygon and polyline are read with every
transform of their groups applied (arcs become cubics, svgelements' approximation), solid fills and strokes with
their opacities (fill-opacity, stroke-opacity, and the `opacity` of the element and of every group above it,
multiplied in: exact unless shapes of one translucent group overlap), the fill rule, and the stroke's width (scaled
by the transform's mean scale), caps, joins and miter limit. Refused with :class:`SvgError`: a file that is not an
SVG, one with nothing to draw (the elements that were not read are named), a gradient or pattern paint. Read but
not drawn, each with a warning: text, images, dashes (drawn solid), clip paths, masks and filters.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from xml.etree.ElementTree import ParseError

import svgelements as se
import torch

from pds_nerfstudio.svg.scene import CAPS, CUBIC, JOINS, LINE, QUADRATIC, VectorScene

UNSUPPORTED_ELEMENTS = {"Text": "text", "Image": "image", "SVGText": "text", "SVGImage": "image"}
"""svgelements classes of elements that are not drawn, and their SVG names."""
IGNORED_ATTRIBUTES = {"clip-path": "clipped", "mask": "masked", "filter": "filtered"}
_CLOSE_EPS = 1e-9


class SvgError(ValueError):
    """The file cannot be edited; the message says why and what to do."""


@dataclass
class _Shape:
    """One element's geometry and paint, in lists, before they become tensors."""

    contours: list[tuple[list[tuple[int, int, int, int, int]], bool]]
    fill: tuple[float, float, float, float] | None
    stroke: tuple[float, float, float, float] | None
    stroke_width: float
    evenodd: bool
    linecap: int
    linejoin: int
    miterlimit: float
    id: str | None
    tag: str


def load_svg(path: Path) -> VectorScene:
    """The drawing of the SVG file at `path` (warnings for what is read but not drawn).

    Raises:
        SvgError: not an SVG, nothing to draw, a gradient or pattern paint.
    """
    try:
        document = se.SVG.parse(str(path))
    except (ParseError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise SvgError(f"{path} is not an SVG file ({_one_line(err)})") from err
    if not isinstance(document, se.SVG):
        raise SvgError(f"{path} is not an SVG file (its root element is not <svg>)")
    return scene_of(document, str(path))


def scene_of(document: se.SVG, name: str) -> VectorScene:
    """The drawing of a parsed document (see :func:`load_svg`)."""
    width, height = float(document.width), float(document.height)
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise SvgError(f"{name}: the canvas has no size (width {width}, height {height}): give the <svg> a width and "
                       "height or a viewBox")  # fmt: skip
    points: list[tuple[float, float]] = []
    shapes: list[_Shape] = []
    skipped: dict[str, int] = {}
    ignored: dict[str, int] = {}
    _walk(document, 1.0, points, shapes, skipped, ignored, name)
    if not shapes:
        found = f"; it has {_counted(skipped)}, which are not supported: convert them to paths (Inkscape: Path > Object to Path)" if skipped else ""
        raise SvgError(f"{name} has no shapes to edit (paths, rects, circles, ellipses, lines, polygons, polylines with "
                       f"a fill or a stroke){found}")  # fmt: skip
    if skipped:
        warnings.warn(f"{_counted(skipped)} not drawn and left out of the edited file (only shapes are supported: "
                      "convert text and images to paths)", stacklevel=2)  # fmt: skip
    for what, count in ignored.items():
        warnings.warn(f"{count} shape(s) {what}: drawn and written without it", stacklevel=2)
    return _tensors(width, height, points, shapes)


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} <{tag}>" for tag, count in sorted(counts.items()))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _own_opacity(element: se.SVGElement) -> float:
    value = element.values.get("attributes", {}).get("opacity", "1")
    try:
        return min(max(float(value), 0.0), 1.0)
    except ValueError:
        return 1.0


def _walk(group, opacity, points, shapes, skipped, ignored, name) -> None:  # noqa: ANN001
    for element in group:
        kind = type(element).__name__
        if kind in UNSUPPORTED_ELEMENTS:
            tag = UNSUPPORTED_ELEMENTS[kind]
            skipped[tag] = skipped.get(tag, 0) + 1
        elif isinstance(element, se.Shape):
            shape = _shape(element, opacity * _own_opacity(element), points, name)
            if shape is not None:
                shapes.append(shape)
                _note_ignored(element, ignored)
        elif isinstance(element, (se.Group, se.Use)) or isinstance(element, list):
            _walk(element, opacity * _own_opacity(element), points, shapes, skipped, ignored, name)


def _note_ignored(element: se.Shape, ignored: dict[str, int]) -> None:
    values = element.values
    dashes = str(values.get("stroke-dasharray", "none")).strip()
    if dashes not in ("none", "", "0") and element.stroke is not None and element.stroke.value is not None:
        ignored["with dashes drawn solid"] = ignored.get("with dashes drawn solid", 0) + 1
    for attribute, what in IGNORED_ATTRIBUTES.items():
        if attribute in values and str(values[attribute]).strip() not in ("none", ""):
            ignored[what] = ignored.get(what, 0) + 1


def _paint(element: se.Shape, which: str, opacity: float, name: str) -> tuple[float, float, float, float] | None:
    declared = str(element.values.get(which, "")).strip()
    if declared.startswith("url("):
        label = f"<{element.values.get('tag', 'shape')}" + (f" id={element.id!r}" if element.id else "") + ">"
        raise SvgError(f"{name}: {label} has a gradient or pattern {which} ({declared}), which is not supported: give "
                       f"it a solid {which} colour (Inkscape: Fill and Stroke > Flat color)")  # fmt: skip
    colour = element.fill if which == "fill" else element.stroke
    if colour is None or colour.value is None:
        return None
    alpha = colour.alpha / 255 * opacity
    if alpha <= 0:
        return None
    return (colour.red / 255, colour.green / 255, colour.blue / 255, alpha)


def _shape(element: se.Shape, opacity: float, points: list, name: str) -> _Shape | None:
    fill = _paint(element, "fill", opacity, name)
    stroke = _paint(element, "stroke", opacity, name)
    stroke_width = float(element.implicit_stroke_width) if stroke is not None else 0.0
    if stroke_width <= 0:
        stroke = None
    if fill is None and stroke is None:
        return None
    contours = _contours(abs(se.Path(element)), points)
    if not contours:
        return None
    values = element.values
    join = str(values.get("stroke-linejoin", "miter")).strip()
    cap = str(values.get("stroke-linecap", "butt")).strip()
    try:
        miterlimit = max(float(values.get("stroke-miterlimit", 4.0)), 1.0)
    except ValueError:
        miterlimit = 4.0
    return _Shape(
        contours=contours,
        fill=fill,
        stroke=stroke,
        stroke_width=stroke_width,
        evenodd=str(values.get("fill-rule", "nonzero")).strip() == "evenodd",
        linecap=CAPS.index(cap) if cap in CAPS else 0,
        linejoin=JOINS.index(join) if join in JOINS else 0,
        miterlimit=miterlimit,
        id=element.id,
        tag=str(values.get("tag", "path")),
    )


def _contours(path: se.Path, points: list) -> list[tuple[list[tuple[int, int, int, int, int]], bool]]:
    """The path's subpaths as segments (start, control, control, end point rows, kind) over `points`."""
    contours = []
    segments: list[tuple[int, int, int, int, int]] = []
    start = current = None

    def add(point: se.Point) -> int:
        points.append((float(point.x), float(point.y)))
        return len(points) - 1

    def finish(closed: bool) -> None:
        nonlocal segments
        if segments:
            contours.append((segments, closed))
        segments = []

    for segment in path:
        if isinstance(segment, se.Move):
            finish(False)
            start = current = add(segment.end)
        elif current is None:
            continue
        elif isinstance(segment, se.Close):
            here, first = points[current], points[start]
            if math.dist(here, first) > _CLOSE_EPS:
                segments.append((current, current, current, start, LINE))
            elif segments:
                s = segments[-1]
                segments[-1] = (s[0], s[1], s[2], start, s[4])
            finish(True)
            current = start
            start = current = add(se.Point(*points[start]))
        elif isinstance(segment, se.Line):
            end = add(segment.end)
            segments.append((current, current, current, end, LINE))
            current = end
        elif isinstance(segment, se.QuadraticBezier):
            control, end = add(segment.control), add(segment.end)
            segments.append((current, control, current, end, QUADRATIC))
            current = end
        elif isinstance(segment, se.CubicBezier):
            c1, c2, end = add(segment.control1), add(segment.control2), add(segment.end)
            segments.append((current, c1, c2, end, CUBIC))
            current = end
        elif isinstance(segment, se.Arc):
            for cubic in segment.as_cubic_curves():
                c1, c2, end = add(cubic.control1), add(cubic.control2), add(cubic.end)
                segments.append((current, c1, c2, end, CUBIC))
                current = end
    finish(False)
    return contours


def _tensors(width: float, height: float, points: list, shapes: list[_Shape]) -> VectorScene:
    rows, kinds, segment_contour, contour_shape, contour_closed = [], [], [], [], []
    for s, shape in enumerate(shapes):
        for segments, closed in shape.contours:
            for segment in segments:
                rows.append(segment[:4])
                kinds.append(segment[4])
                segment_contour.append(len(contour_shape))
            contour_shape.append(s)
            contour_closed.append(closed)
    # Keep only the points that segments use, renumbered in order of first use.
    used = sorted({row for segment in rows for row in segment})
    renumber = {old: new for new, old in enumerate(used)}
    none = (0.0, 0.0, 0.0, 0.0)
    return VectorScene(
        width=width,
        height=height,
        points=torch.tensor([points[i] for i in used], dtype=torch.float32),
        segment_points=torch.tensor([[renumber[i] for i in row] for row in rows], dtype=torch.long),
        segment_kind=torch.tensor(kinds, dtype=torch.long),
        segment_contour=torch.tensor(segment_contour, dtype=torch.long),
        contour_shape=torch.tensor(contour_shape, dtype=torch.long),
        contour_closed=torch.tensor(contour_closed, dtype=torch.bool),
        fill_colour=torch.tensor([shape.fill or none for shape in shapes], dtype=torch.float32),
        stroke_colour=torch.tensor([shape.stroke or none for shape in shapes], dtype=torch.float32),
        stroke_width=torch.tensor([shape.stroke_width for shape in shapes], dtype=torch.float32),
        has_fill=torch.tensor([shape.fill is not None for shape in shapes]),
        has_stroke=torch.tensor([shape.stroke is not None for shape in shapes]),
        evenodd=torch.tensor([shape.evenodd for shape in shapes]),
        linecap=torch.tensor([shape.linecap for shape in shapes], dtype=torch.long),
        linejoin=torch.tensor([shape.linejoin for shape in shapes], dtype=torch.long),
        miterlimit=torch.tensor([shape.miterlimit for shape in shapes], dtype=torch.float32),
        ids=[shape.id for shape in shapes],
        tags=[shape.tag for shape in shapes],
    )
