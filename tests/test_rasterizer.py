"""The plain-torch reference Gaussian rasteriser against a case computed by hand: values, gradients, and the
screen-space means (with their absolute gradient) that splatfacto's densification reads."""

from __future__ import annotations

import math

import pytest
import torch

from pds_nerfstudio.scenes.rasterizer import rasterization, rasterize_reference

FOCAL, SIZE = 8.0, 8
Z = (2.0, 4.0)  # depths of the front (A) and back (B) Gaussians, both on the optical axis
SCALE = (0.25, 0.5)  # so that both project to a 1-pixel standard deviation (f s / z = 1)
OPACITY = (0.6, 0.9)
COLOUR = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0))


def _scene(dtype=torch.float64, size: int = SIZE):
    means = torch.tensor([[0.0, 0.0, Z[0]], [0.0, 0.0, Z[1]]], dtype=dtype, requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=dtype)
    scales = torch.tensor([[SCALE[0]] * 3, [SCALE[1]] * 3], dtype=dtype)
    opacities = torch.tensor(OPACITY, dtype=dtype, requires_grad=True)
    colours = torch.tensor(COLOUR, dtype=dtype, requires_grad=True)
    viewmats = torch.eye(4, dtype=dtype)[None]  # camera at the origin looking down +z (gsplat's convention)
    Ks = torch.tensor([[[FOCAL, 0, size / 2], [0, FOCAL, size / 2], [0, 0, 1]]], dtype=dtype)
    return means, quats, scales, opacities, colours, viewmats, Ks


def _by_hand(px: float, py: float, size: int = SIZE) -> tuple[torch.Tensor, float, float, float]:
    """Colour, alpha, d(red)/d(opacity A) and d(red)/d(mean A, x) at pixel centre (px, py)."""
    variance = 1.0 + 0.3  # (f s / z)^2 plus gsplat's eps2d
    d2 = (size / 2 - px) ** 2 + (size / 2 - py) ** 2
    e = math.exp(-0.5 * d2 / variance)
    a, b = min(OPACITY[0] * e, 0.999), min(OPACITY[1] * e, 0.999)
    a, b = (a if a >= 1 / 255 else 0.0), (b if b >= 1 / 255 else 0.0)
    colour = a * torch.tensor(COLOUR[0], dtype=torch.float64) + (1 - a) * b * torch.tensor(COLOUR[1], dtype=torch.float64)
    red_per_opacity = e * COLOUR[0][0] if a > 0 else 0.0  # red comes from A alone
    red_per_mean_x = a * COLOUR[0][0] * -(size / 2 - px) / variance  # d a / d mean2d_x times A's red
    return colour, a + (1 - a) * b, red_per_opacity, red_per_mean_x


@pytest.mark.parametrize("size", [SIZE, 32], ids=["one tile", "four tiles meeting under the gaussians"])
def test_the_reference_composites_two_gaussians_as_computed_by_hand(size: int) -> None:
    means, quats, scales, opacities, colours, viewmats, Ks = _scene(size=size)
    render, alpha, info = rasterize_reference(means, quats, scales, opacities, colours, viewmats, Ks, size, size,
                                              absgrad=True)  # fmt: skip
    assert render.shape == (1, size, size, 3) and alpha.shape == (1, size, size, 1)
    torch.testing.assert_close(info["means2d"][0].detach(), torch.full((2, 2), size / 2, dtype=torch.float64))
    assert info["radii"].tolist() == [[4, 4]]  # ceil(3 sqrt(1.3))
    red_per_opacity, red_per_mean_x, absgrad_x = 0.0, 0.0, 0.0
    for y in range(size):
        for x in range(size):
            if size > SIZE and max(abs(x + 0.5 - size / 2), abs(y + 0.5 - size / 2)) > 4:
                continue  # outside the 3-sigma boxes' tiles gsplat blends nothing; inside, as computed here
            colour, coverage, per_opacity, per_mean = _by_hand(x + 0.5, y + 0.5, size)
            torch.testing.assert_close(render[0, y, x], colour, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(alpha[0, y, x, 0].item(), coverage, rtol=1e-9, atol=1e-12)
            red_per_opacity += per_opacity
            red_per_mean_x += per_mean
            absgrad_x += abs(per_mean)

    info["means2d"].retain_grad()  # what splatfacto's densification strategy does before back-propagation
    render[..., 0].sum().backward()
    assert opacities.grad[0].item() == pytest.approx(red_per_opacity, rel=1e-9)
    assert info["means2d"].grad[0, 0, 0].item() == pytest.approx(red_per_mean_x, abs=1e-9)  # symmetric: ~0
    assert info["means2d"].absgrad[0, 0, 0].item() == pytest.approx(absgrad_x, rel=1e-9)  # not cancelled
    assert absgrad_x > 1.0
    assert means.grad is not None and colours.grad is not None


def test_depth_is_the_alpha_weighted_mean_of_the_gaussians_depths() -> None:
    means, quats, scales, opacities, colours, viewmats, Ks = _scene()
    render, alpha, _ = rasterize_reference(means, quats, scales, opacities, colours, viewmats, Ks, SIZE, SIZE,
                                           render_mode="RGB+ED")  # fmt: skip
    _, coverage, _, _ = _by_hand(SIZE / 2 + 0.5, SIZE / 2 + 0.5)
    a = OPACITY[0] * math.exp(-0.5 * 0.5 / 1.3)
    b = OPACITY[1] * math.exp(-0.5 * 0.5 / 1.3)
    expected = (a * Z[0] + (1 - a) * b * Z[1]) / (a + (1 - a) * b)
    assert render[0, SIZE // 2, SIZE // 2, 3].item() == pytest.approx(expected, rel=1e-9)


def test_spherical_harmonics_of_degree_zero_match_post_activation_colours() -> None:
    means, quats, scales, opacities, colours, viewmats, Ks = _scene()
    sh0 = ((colours.detach() - 0.5) / 0.28209479177387814)[:, None, :]  # gsplat: colour = 0.2821 c0 + 0.5
    plain, _, _ = rasterize_reference(means, quats, scales, opacities, colours, viewmats, Ks, SIZE, SIZE)
    harmonic, _, _ = rasterize_reference(means, quats, scales, opacities, sh0, viewmats, Ks, SIZE, SIZE, sh_degree=0)
    torch.testing.assert_close(harmonic, plain)


def test_on_cpu_rasterization_is_the_reference() -> None:
    means, quats, scales, opacities, colours, viewmats, Ks = (t.float().detach() for t in _scene())
    ours, _, _ = rasterization(means, quats, scales, opacities, colours, viewmats, Ks, SIZE, SIZE)
    reference, _, _ = rasterize_reference(means, quats, scales, opacities, colours, viewmats, Ks, SIZE, SIZE)
    assert torch.equal(ours, reference)
