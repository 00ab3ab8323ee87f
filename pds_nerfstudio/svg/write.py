"""Write a :class:`VectorScene` as an SVG file: one <path> per shape, absolute coordinates in canvas pixels, its
paint as attributes, its original id kept; the canvas as width, height and viewBox."""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import torch

from pds_nerfstudio.svg.scene import CAPS, CUBIC, JOINS, LINE, QUADRATIC, VectorScene


def _number(value: float) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _point(xy: list[float]) -> str:
    return f"{_number(xy[0])} {_number(xy[1])}"


def _colour(rgba: list[float]) -> tuple[str, str]:
    """(#rrggbb, opacity) of an RGBA colour in [0, 1], clamped."""
    r, g, b, a = (min(max(c, 0.0), 1.0) for c in rgba)
    return "#" + "".join(f"{round(c * 255):02x}" for c in (r, g, b)), _number(a)


def path_data(scene: VectorScene, shape: int) -> str:
    """The `d` attribute of one shape: its contours as M, L, Q, C and Z commands."""
    points = scene.points.detach().cpu().tolist()
    contours = torch.nonzero(scene.contour_shape == shape).flatten().tolist()
    commands = []
    for contour in contours:
        segments = torch.nonzero(scene.segment_contour == contour).flatten().tolist()
        closed = bool(scene.contour_closed[contour])
        rows = scene.segment_points[segments].tolist()
        kinds = scene.segment_kind[segments].tolist()
        commands.append("M" + _point(points[rows[0][0]]))
        for index, (row, kind) in enumerate(zip(rows, kinds)):
            if closed and index == len(rows) - 1 and kind == LINE:
                break  # the closing line is Z's
            if kind == LINE:
                commands.append("L" + _point(points[row[3]]))
            elif kind == QUADRATIC:
                commands.append("Q" + _point(points[row[1]]) + " " + _point(points[row[3]]))
            elif kind == CUBIC:
                commands.append("C" + " ".join(_point(points[i]) for i in row[1:]))
        if closed:
            commands.append("Z")
    return " ".join(commands)


def svg_text(scene: VectorScene) -> str:
    """The whole SVG document of `scene`."""
    width, height = _number(scene.width), _number(scene.height)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">']  # fmt: skip
    fills, strokes = scene.fill_colour.detach().cpu().tolist(), scene.stroke_colour.detach().cpu().tolist()
    widths = scene.stroke_width.detach().cpu().tolist()
    for shape in range(scene.num_shapes):
        attributes = {"d": path_data(scene, shape)}
        if scene.ids and scene.ids[shape]:
            attributes = {"id": scene.ids[shape], **attributes}
        if bool(scene.has_fill[shape]):
            attributes["fill"], opacity = _colour(fills[shape])
            if opacity != "1":
                attributes["fill-opacity"] = opacity
            if bool(scene.evenodd[shape]):
                attributes["fill-rule"] = "evenodd"
        else:
            attributes["fill"] = "none"
        if bool(scene.has_stroke[shape]):
            attributes["stroke"], opacity = _colour(strokes[shape])
            if opacity != "1":
                attributes["stroke-opacity"] = opacity
            attributes["stroke-width"] = _number(max(widths[shape], 0.0))
            attributes["stroke-linecap"] = CAPS[int(scene.linecap[shape])]
            attributes["stroke-linejoin"] = JOINS[int(scene.linejoin[shape])]
            attributes["stroke-miterlimit"] = _number(float(scene.miterlimit[shape]))
        lines.append("  <path " + " ".join(f"{key}={quoteattr(value)}" for key, value in attributes.items()) + "/>")
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(scene: VectorScene, path: Path) -> Path:
    """Write `scene` to `path` (its folder must exist); returns `path`."""
    path.write_text(svg_text(scene), encoding="utf-8")
    return path
