"""Reading SVG files into tensors (svgelements) and writing them back."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

from pds_nerfstudio.svg.parse import SvgError, load_svg
from pds_nerfstudio.svg.rasterizer import render
from pds_nerfstudio.svg.scene import CAPS, CUBIC, JOINS, LINE, QUADRATIC
from pds_nerfstudio.svg.write import svg_text, write_svg
from test_svg_rasterizer import FIXTURES, MAD_TOLERANCE, SVG_FILES, cairo_render, svg


def written(tmp_path: Path, text: str, name: str = "in.svg") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_transforms_of_nested_groups_are_applied(tmp_path: Path):
    path = written(tmp_path, svg('<g transform="translate(10 5)"><g transform="scale(2)">'
                                 '<rect x="1" y="2" width="3" height="4" fill="red"/></g></g>'))  # fmt: skip
    scene = load_svg(path)
    corners = {tuple(p) for p in scene.points.tolist()}
    assert corners == {(12.0, 9.0), (18.0, 9.0), (18.0, 17.0), (12.0, 17.0)}
    assert scene.contour_closed.tolist() == [True]
    assert scene.fill_colour[0].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_viewbox_scales_to_the_canvas_and_stroke_width_with_it(tmp_path: Path):
    path = written(tmp_path, '<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48" viewBox="0 0 24 24">'
                             '<path d="M2 2 H 20" stroke="black" stroke-width="1.5"/></svg>')  # fmt: skip
    scene = load_svg(path)
    assert (scene.width, scene.height) == (48.0, 48.0)
    assert scene.points.tolist() == [[4.0, 4.0], [40.0, 4.0]]
    assert float(scene.stroke_width[0]) == pytest.approx(3.0)
    assert scene.has_stroke.tolist() == [True] and scene.has_fill.tolist() == [True]  # black fill of a line: no area


def test_opacities_multiply(tmp_path: Path):
    path = written(tmp_path, svg('<g opacity="0.5"><g style="opacity:0.5"><circle cx="10" cy="10" r="5" fill="#00ff00" '
                                 'fill-opacity="0.8" stroke="blue" stroke-opacity="0.5" opacity="0.5"/></g></g>'))  # fmt: skip
    scene = load_svg(path)
    assert scene.fill_colour[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.8 * 0.125])
    # svgelements keeps a paint's own opacity as an 8-bit alpha: 0.5 reads as 128 / 255.
    assert scene.stroke_colour[0].tolist() == pytest.approx([0.0, 0.0, 1.0, 0.5 * 0.125], abs=0.5 / 255)


def test_every_path_command_and_element(tmp_path: Path):
    path = written(tmp_path, svg(
        '<path d="M1 1 H 10 V 10 h -2 v -2 L 3 9 C 3 5, 5 5, 6 3 S 8 1, 9 2 Q 11 4, 12 6 T 14 8 A 3 2 0 0 1 16 12 z"/>'
        '<ellipse cx="30" cy="30" rx="5" ry="3" fill="blue"/><line x1="0" y1="0" x2="5" y2="5" stroke="red"/>'
        '<polyline points="1,1 2,3 4,1" fill="none" stroke="black" stroke-linecap="round" stroke-linejoin="bevel"/>'
        '<polygon points="40,40 50,40 45,48" fill="green" fill-rule="evenodd"/>'))  # fmt: skip
    scene = load_svg(path)
    assert scene.tags == ["path", "ellipse", "line", "polyline", "polygon"]
    kinds = scene.segment_kind[scene.segment_contour == 0].tolist()
    assert kinds.count(LINE) == 6 and kinds.count(QUADRATIC) == 2 and kinds.count(CUBIC) >= 3
    assert scene.contour_closed.tolist() == [True, True, False, False, True]
    assert scene.linecap[3] == CAPS.index("round") and scene.linejoin[3] == JOINS.index("bevel")
    assert scene.evenodd.tolist() == [False, False, False, False, True]
    assert scene.has_fill.tolist() == [True, True, True, False, True]


def test_gradient_paint_is_refused(tmp_path: Path):
    path = written(tmp_path, svg('<defs><linearGradient id="g"><stop offset="0" stop-color="red"/></linearGradient>'
                                 '</defs><rect id="sky" width="10" height="10" fill="url(#g)"/>'))  # fmt: skip
    with pytest.raises(SvgError, match=r"<rect id='sky'> has a gradient or pattern fill \(url\(#g\)\).*solid fill"):
        load_svg(path)


@pytest.mark.parametrize(
    "body, named",
    [('<text x="1" y="10">hi</text>', "1 <text>"),
     ('<image href="a.png" width="4" height="4"/><text>a</text><text>b</text>', "1 <image>, 2 <text>"),
     ("", "no shapes")],
)  # fmt: skip
def test_nothing_to_draw_is_refused_naming_what_is_there(tmp_path: Path, body: str, named: str):
    with pytest.raises(SvgError, match="no shapes to edit") as caught:
        load_svg(written(tmp_path, svg(body)))
    assert named in str(caught.value)


def test_text_beside_shapes_is_a_warning(tmp_path: Path):
    path = written(tmp_path, svg('<text x="1" y="10">hi</text><rect width="4" height="4" stroke-dasharray="1 1" '
                                 'stroke="red"/>'))  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_svg(path)
    messages = " ".join(str(w.message) for w in caught)
    assert scene.num_shapes == 1 and "1 <text> not drawn" in messages and "dashes drawn solid" in messages


@pytest.mark.parametrize("content", [b"not an svg at all", b"<html><body/></html>", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_not_an_svg_is_refused(tmp_path: Path, content: bytes):
    path = tmp_path / "in.svg"
    path.write_bytes(content)
    with pytest.raises(SvgError, match="is not an SVG file"):
        load_svg(path)


# ------------------------------------------------------------------ writing


@pytest.mark.parametrize("path", SVG_FILES, ids=lambda path: path.stem)
def test_written_file_reads_back_and_renders_the_same(tmp_path: Path, path: Path):
    scene = load_svg(path)
    out = write_svg(scene, tmp_path / "out.svg")
    root = ElementTree.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(root) == scene.num_shapes
    again = load_svg(out)
    width, height = round(scene.width), round(scene.height)
    ours = render(scene, height, width)
    assert (again.width, again.height) == pytest.approx((scene.width, scene.height), abs=1e-3)
    assert torch.allclose(render(again, height, width), ours, atol=2e-2)
    assert (render(again, height, width) - ours).abs().mean() < 1e-3
    # A real renderer draws the written file as we draw it.
    reference = cairo_render(out, width, height)
    assert np.abs(ours.permute(1, 2, 0).double().numpy() - reference).mean() <= MAD_TOLERANCE


def test_ids_and_paint_are_written(tmp_path: Path):
    scene = load_svg(FIXTURES / "inkscape.svg")
    text = svg_text(scene)
    for shape_id in ("leaf", "vein", "window", "blob"):
        assert f'id="{shape_id}"' in text
    assert 'fill="none"' in text and 'stroke-linecap="round"' in text and 'viewBox="0 0 ' in text
