"""The plain-torch vector rasteriser held to a real SVG renderer (cairosvg), to closed-form areas, and to finite
differences of its gradients."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pds_nerfstudio.svg.parse import load_svg, scene_of
from pds_nerfstudio.svg.rasterizer import (
    composite,
    composite_reference,
    layer_coverage,
    render,
    winding_integral,
)

FIXTURES = Path(__file__).parent / "data" / "svg"
SVG_FILES = sorted(FIXTURES.glob("*.svg"))

MAD_TOLERANCE = 1.0 / 255
"""Mean absolute difference allowed against cairosvg, per channel in [0, 1]: one step of an 8-bit image. On these
files cairosvg and resvg, two real renderers, differ from each other by 0.21 to 0.53 / 255 (docs/svg.md); ours is
within 0.16 to 0.37 / 255 of cairosvg."""


def cairo_render(svg: str | Path, width: int, height: int) -> np.ndarray:
    """cairosvg's rendering over white, (H, W, 3) in [0, 1]."""
    cairosvg = pytest.importorskip("cairosvg")
    source = {"url": str(svg)} if isinstance(svg, Path) else {"bytestring": svg.encode()}
    png = cairosvg.svg2png(**source, output_width=width, output_height=height, background_color="white")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255


def scene_from_text(text: str, **kwargs):
    import svgelements

    return scene_of(svgelements.SVG.parse(io.StringIO(text)), "test.svg")


def svg(body: str, width: int = 64, height: int = 64) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{body}</svg>'


def coverage_of_svg(text: str, height: int = 64, width: int = 64, tolerance: float = 0.05) -> torch.Tensor:
    scene = scene_from_text(text).to("cpu", torch.float64)
    coverage, _ = layer_coverage(scene, height, width, tolerance)
    return coverage


# ------------------------------------------------------------------ real renderer


def test_fixtures_are_there():
    assert {path.name for path in SVG_FILES} >= {"icon.svg", "evenodd.svg", "transforms.svg", "opacity.svg", "inkscape.svg"}


@pytest.mark.parametrize("path", SVG_FILES, ids=lambda path: path.stem)
def test_matches_cairosvg(path: Path):
    scene = load_svg(path)
    width, height = round(scene.width), round(scene.height)
    ours = render(scene, height, width).permute(1, 2, 0).double().numpy()
    reference = cairo_render(path, width, height)
    assert ours.shape == reference.shape
    mad = np.abs(ours - reference).mean()
    assert mad <= MAD_TOLERANCE, f"{path.name}: mean absolute difference {mad * 255:.3f}/255"
    # Not a blank or shifted image: most pixels agree to within 2/255.
    assert (np.abs(ours - reference).max(-1) <= 2 / 255).mean() > 0.95


def test_at_another_resolution_matches_cairosvg():
    path = FIXTURES / "icon.svg"
    ours = render(load_svg(path), 64, 64).permute(1, 2, 0).double().numpy()
    assert np.abs(ours - cairo_render(path, 64, 64)).mean() <= MAD_TOLERANCE


# ------------------------------------------------------------------ exact areas


def shoelace(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def polygon_winding(points: np.ndarray, height: int = 64, width: int = 64) -> torch.Tensor:
    p = torch.tensor(points, dtype=torch.float64)
    edges = torch.stack([p, p.roll(-1, 0)], dim=1)
    return winding_integral(edges, torch.zeros(len(p), dtype=torch.long), 1, height, width)[0]


@pytest.mark.parametrize("seed", range(4))
def test_polygon_coverage_sums_to_its_area(seed: int):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(3, 12))
    angles = np.sort(rng.uniform(0, 2 * math.pi, count))
    radii = rng.uniform(5, 28, count)  # star-shaped about the centre: a simple polygon, concave in places
    centre = rng.uniform(30, 34, 2)
    points = centre + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    coverage = polygon_winding(points).abs()
    assert coverage.max() <= 1 + 1e-9
    assert float(coverage.sum()) == pytest.approx(shoelace(points), abs=1e-9)


def test_rectangle_coverage_is_exact_per_pixel():
    x0, y0, x1, y1 = 3.3, 5.75, 20.6, 9.1
    coverage = polygon_winding(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), 16, 24).abs()
    columns = np.clip(np.minimum(np.arange(24) + 1, x1) - np.maximum(np.arange(24), x0), 0, None)
    rows = np.clip(np.minimum(np.arange(16) + 1, y1) - np.maximum(np.arange(16), y0), 0, None)
    assert np.allclose(coverage.numpy(), rows[:, None] * columns[None, :], atol=1e-12)


def test_triangle_coverage_per_pixel():
    """A right triangle below the diagonal x = y + 0.25: pixel (0, 0) and (1, 1) by hand."""
    coverage = polygon_winding(np.array([[0.5, 0.25], [3.5, 3.25], [0.5, 3.25]]), 5, 5).abs()
    assert float(coverage[0, 0]) == pytest.approx(0.25)
    assert float(coverage[0, 1]) == pytest.approx(0.03125)
    assert float(coverage[1, 1]) == pytest.approx(0.71875)
    assert float(coverage.sum()) == pytest.approx(4.5)


@pytest.mark.parametrize("radius, tolerance", [(5.0, 0.05), (17.3, 0.05), (27.9, 0.05), (17.3, 0.002)])
def test_circle_coverage_sums_to_pi_r_squared(radius: float, tolerance: float):
    """The chords of the flattened circle are inside it, each at most `tolerance` from the arc: the area lost is
    at most perimeter x tolerance."""
    text = svg(f'<circle cx="32.3" cy="31.6" r="{radius}" fill="black"/>')
    area = float(coverage_of_svg(text, tolerance=tolerance).sum())
    exact = math.pi * radius**2
    assert exact - 2 * math.pi * radius * tolerance - 1e-6 <= area <= exact + 1e-6 * exact


def test_evenodd_ring_and_nonzero_disc():
    ring = 'd="M32 4 A 28 28 0 1 1 31.99 4 Z M32 16 A 16 16 0 1 0 32.01 16 Z"'
    evenodd = float(coverage_of_svg(svg(f'<path fill-rule="evenodd" {ring}/>'), tolerance=0.002).sum())
    assert evenodd == pytest.approx(math.pi * (28**2 - 16**2), rel=2e-3)
    # Same direction twice: nonzero fills the hole, evenodd leaves it empty.
    same = 'd="M32 4 A 28 28 0 1 1 31.99 4 Z M32 16 A 16 16 0 1 1 31.99 16 Z"'
    assert float(coverage_of_svg(svg(f'<path {same}/>'), tolerance=0.002).sum()) == pytest.approx(math.pi * 28**2, rel=2e-3)
    assert float(coverage_of_svg(svg(f'<path fill-rule="evenodd" {same}/>'), tolerance=0.002).sum()) == pytest.approx(
        math.pi * (28**2 - 16**2), rel=2e-3
    )


@pytest.mark.parametrize(
    "cap, extra", [("butt", 0.0), ("square", 4.0 * 4.0), ("round", math.pi * 2.0**2)]
)
def test_stroke_of_a_line_covers_width_times_length_plus_caps(cap: str, extra: float):
    text = svg(f'<path d="M10.3 20.2 L50.7 41.1" stroke="black" stroke-width="4" stroke-linecap="{cap}" fill="none"/>')
    length = math.hypot(40.4, 20.9)
    area = float(coverage_of_svg(text).sum())
    if cap == "round":  # each half disc's chords within the tolerance (0.05) of the arc: at most pi r tol less
        assert 4 * length + extra - 2 * math.pi * 2.0 * 0.05 <= area <= 4 * length + extra + 1e-6
    else:
        assert area == pytest.approx(4 * length + extra, rel=1e-6)  # points parsed as float32


def test_stroke_of_a_rectangle_with_miter_joins_is_a_frame():
    text = svg('<rect x="10.5" y="12.25" width="30" height="20" stroke="black" stroke-width="3" fill="none"/>')
    assert float(coverage_of_svg(text).sum()) == pytest.approx(33 * 23 - 27 * 17, abs=1e-9)
    coverage = coverage_of_svg(text)
    assert float(coverage.max()) == pytest.approx(1.0)


def test_acute_corner_stroke_area():
    """A V of two long chords at 36 degrees, miter join: the outline is the stroke's boundary (area by shoelace)."""
    half = 1.0
    a, v, b = np.array([10.0, 10.0]), np.array([50.0, 30.0]), np.array([10.0, 30.0 + 20 * math.tan(math.radians(0))])
    direction = np.array([math.cos(math.radians(18)), math.sin(math.radians(18))])
    a = v - 40 * direction
    b = v - 40 * np.array([direction[0], -direction[1]])
    text = svg(f'<path d="M{a[0]} {a[1]} L{v[0]} {v[1]} L{b[0]} {b[1]}" stroke="black" stroke-width="{2 * half}" '
               'stroke-miterlimit="10" fill="none"/>')  # fmt: skip
    n0 = np.array([-(v - a)[1], (v - a)[0]]) / np.linalg.norm(v - a)
    n1 = np.array([-(b - v)[1], (b - v)[0]]) / np.linalg.norm(b - v)
    cos = float(n0 @ n1)
    outline = np.array([a + half * n0, v + half * (n0 + n1) / (1 + cos), b + half * n1, b - half * n1,
                        v - half * (n0 + n1) / (1 + cos), a - half * n0])  # fmt: skip
    assert float(coverage_of_svg(text).sum()) == pytest.approx(shoelace(outline), rel=1e-6)


# ------------------------------------------------------------------ compositing


def test_composite_matches_the_plain_loop():
    generator = torch.Generator().manual_seed(0)
    coverage = torch.rand(7, 9, 11, generator=generator, dtype=torch.float64)
    coverage[2, :3] = 1.0  # opaque layers: a zero in the product
    colours = torch.rand(7, 4, generator=generator, dtype=torch.float64)
    colours[2, 3] = 1.0
    background = torch.tensor([1.0, 0.9, 0.8], dtype=torch.float64)
    assert torch.allclose(composite(coverage, colours, background), composite_reference(coverage, colours, background))
    coverage.requires_grad_(True)
    colours.requires_grad_(True)
    fast = torch.autograd.grad(composite(coverage, colours, background).square().sum(), (coverage, colours))
    plain = torch.autograd.grad(composite_reference(coverage, colours, background).square().sum(), (coverage, colours))
    for a, b in zip(fast, plain):
        assert torch.allclose(a, b)


def test_empty_drawing_is_the_background():
    scene = scene_from_text(svg('<rect width="10" height="10" fill="red"/>'))
    scene = scene.with_parameters(points=scene.points + 1000)  # off the canvas
    image = render(scene, 8, 8, background=(0.2, 0.4, 0.6))
    assert torch.allclose(image, torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1).expand(3, 8, 8))


# ------------------------------------------------------------------ gradients


GRADIENT_SCENE = svg(
    '<path d="M8 30 C 12 6, 40 4, 50 20 Q 58 40, 30 52 Z" fill="#c03020" fill-opacity="0.8" '
    'stroke="#203080" stroke-width="3.3" stroke-linejoin="round"/>'
    '<polygon fill-rule="evenodd" fill="#20a040" points="20,20 44,30 16,38 36,12 34,46"/>'
    '<polyline points="6,58 20,44 32,58" fill="none" stroke="#806020" stroke-width="2.5" stroke-linecap="round"/>',
    width=40, height=48,
)  # fmt: skip


def test_gradients_match_finite_differences():
    scene = scene_from_text(GRADIENT_SCENE).to("cpu", torch.float64)
    weights = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(points, fill, stroke, width):
        image = render(scene.with_parameters(points=points, fill_colour=fill, stroke_colour=stroke, stroke_width=width), 40, 48)
        return (image * weights).sum()

    parameters = [scene.points.clone(), scene.fill_colour.clone(), scene.stroke_colour.clone(), scene.stroke_width.clone()]
    for p in parameters:
        p.requires_grad_(True)
    gradients = torch.autograd.grad(loss(*parameters), parameters)
    eps = 1e-6
    checked = 0
    for index, (parameter, gradient) in enumerate(zip(parameters, gradients)):
        flat = parameter.detach().flatten()
        for k in range(flat.numel()):
            if index == 0 and k % 2 == 1 and k > 12:  # every x, and the first points' y as well
                continue
            plus, minus = flat.clone(), flat.clone()
            plus[k] += eps
            minus[k] -= eps
            args_plus = [p.detach() for p in parameters]
            args_minus = [p.detach() for p in parameters]
            args_plus[index] = plus.view_as(parameter)
            args_minus[index] = minus.view_as(parameter)
            numeric = (loss(*args_plus) - loss(*args_minus)) / (2 * eps)
            analytic = gradient.flatten()[k]
            assert float(analytic) == pytest.approx(float(numeric), rel=1e-4, abs=1e-5), (index, k)
            checked += 1
    assert checked > 40
    assert gradients[0].abs().sum() > 0 and gradients[3].abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_render_matches_cpu():
    scene = load_svg(FIXTURES / "icon.svg")
    cpu = render(scene, 96, 96)
    cuda_scene = scene.to("cuda")
    points = cuda_scene.points.clone().requires_grad_(True)
    image = render(cuda_scene.with_parameters(points=points), 96, 96)
    image.sum().backward()
    assert image.is_cuda and torch.allclose(image.cpu(), cpu, atol=1e-4)
    assert torch.isfinite(points.grad).all()
