"""Gaussian splat rasterisation: gsplat's CUDA `rasterization` on a GPU, a plain-torch reference elsewhere.

gsplat 1.4's rasteriser is CUDA only, so splatfacto cannot train or render on a CPU. :func:`rasterize_reference`
does what gsplat's tile rasteriser does, in torch: gsplat's own torch projection (`_fully_fused_projection`) and
spherical harmonics (`_spherical_harmonics`) from `gsplat.cuda._torch_impl`, then, for every pixel, every
Gaussian whose 3-sigma box overlaps the pixel's 16x16 tile, front to back by depth, composited as gsplat's
CUDA kernel composites (alpha = min(0.999, opacity exp(-sigma)), skipped below 1/255 or for sigma < 0,
stopping before the transmittance falls to 1e-4), one tile at a time. Memory and time grow with each tile's
pixels x Gaussians: fine at 64x64 and a few thousand Gaussians, not at photo sizes (use a GPU). The screen-space means that splatfacto's
densification reads come back in the same `info` entries, with `.grad` (autograd) and `.absgrad` (the sum
over pixels of each pixel's absolute gradient, as gsplat's kernel accumulates it).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor

TILE_SIZE = 16
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4


def rasterization(means: Tensor, *args, **kwargs) -> Tuple[Tensor, Tensor, Dict]:
    """gsplat's `rasterization` where the Gaussians are on a CUDA device, :func:`rasterize_reference` elsewhere."""
    if means.is_cuda:
        from gsplat.rendering import rasterization as gsplat_rasterization

        return gsplat_rasterization(means, *args, **kwargs)
    return rasterize_reference(means, *args, **kwargs)


def rasterize_reference(
    means: Float[Tensor, "N 3"],
    quats: Float[Tensor, "N 4"],
    scales: Float[Tensor, "N 3"],
    opacities: Float[Tensor, "N"],
    colors: Tensor,
    viewmats: Float[Tensor, "C 4 4"],
    Ks: Float[Tensor, "C 3 3"],
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
    absgrad: bool = False,
    packed: bool = False,
    sparse_grad: bool = False,
    **unused: object,
) -> Tuple[Float[Tensor, "C H W D"], Float[Tensor, "C H W 1"], Dict]:
    """The subset of gsplat 1.4's `rasterization` arguments that splatfacto uses, on any device (see the module
    docstring). `colors` are post-activation [N, D] when `sh_degree` is None, else SH coefficients [N, K, 3]."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics

    if render_mode not in ("RGB", "RGB+ED", "ED"):
        raise ValueError(f"the reference rasteriser renders RGB, RGB+ED or ED, not {render_mode}")
    cameras = viewmats.shape[0]
    quats = quats / quats.norm(dim=-1, keepdim=True)  # gsplat normalises internally
    covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    radii, means2d, depths, conics, compensations = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    opacity = opacities.repeat(cameras, 1)
    if compensations is not None:
        opacity = opacity * compensations
    if sh_degree is None:
        rgb = colors.expand(cameras, -1, -1) if colors.dim() == 2 else colors
    else:
        camera_positions = torch.inverse(viewmats)[:, :3, 3]
        directions = means[None] - camera_positions[:, None]
        coefficients = colors.expand(cameras, -1, -1, -1) if colors.dim() == 3 else colors
        rgb = torch.clamp_min(_spherical_harmonics(sh_degree, directions, coefficients) + 0.5, 0.0)
        rgb = torch.where((radii > 0)[..., None], rgb, torch.zeros_like(rgb))
    if render_mode == "RGB+ED":
        features = torch.cat([rgb, depths[..., None]], dim=-1)
    elif render_mode == "ED":
        features = depths[..., None]
    else:
        features = rgb
    images, alphas, pixel_offsets = [], [], []
    for c in range(cameras):
        image, alpha, offsets = _composite(means2d[c], conics[c], opacity[c], features[c], depths[c], radii[c],
                                           width, height)  # fmt: skip
        images.append(image)
        alphas.append(alpha)
        pixel_offsets.append(offsets)  # per tile: pixel offsets, and the Gaussians they belong to
    render, alpha = torch.stack(images), torch.stack(alphas)
    if render_mode in ("RGB+ED", "ED"):
        render = torch.cat([render[..., :-1], render[..., -1:] / alpha.clamp(min=1e-10)], dim=-1)
    if absgrad and means2d.requires_grad:
        _track_absgrad(means2d, pixel_offsets)
    info = {
        "camera_ids": None, "gaussian_ids": None, "radii": radii, "means2d": means2d, "depths": depths,
        "conics": conics, "opacities": opacity, "width": width, "height": height, "tile_size": TILE_SIZE,
        "n_cameras": cameras,
    }  # fmt: skip
    return render, alpha, info


def _composite(
    means2d: Float[Tensor, "N 2"],
    conics: Float[Tensor, "N 3"],
    opacity: Float[Tensor, "N"],
    features: Float[Tensor, "N D"],
    depths: Float[Tensor, "N"],
    radii: Tensor,
    width: int,
    height: int,
) -> Tuple[Float[Tensor, "H W D"], Float[Tensor, "H W 1"], list]:
    """One camera, tile by tile: every pixel blends the Gaussians that gsplat's tile intersection gives its
    16x16 tile, front to back (gsplat's classic kernel). Returns the image, its alpha, and per tile the pixel
    offsets from the Gaussians' screen positions with the indices of those Gaussians (for `absgrad`)."""
    device = means2d.device
    order = torch.argsort(depths.detach())
    order = order[radii[order] > 0]
    low, high = _tile_ranges(means2d.detach()[order], radii[order], width, height)
    image = means2d.new_zeros(height, width, features.shape[-1])
    alpha_image = means2d.new_zeros(height, width, 1)
    rows, pieces = [], []
    for tile_y in range(math.ceil(height / TILE_SIZE)):
        row = []
        for tile_x in range(math.ceil(width / TILE_SIZE)):
            y0, x0 = tile_y * TILE_SIZE, tile_x * TILE_SIZE
            y1, x1 = min(y0 + TILE_SIZE, height), min(x0 + TILE_SIZE, width)
            hits = (low[:, 0] <= tile_x) & (tile_x < high[:, 0]) & (low[:, 1] <= tile_y) & (tile_y < high[:, 1])
            ids = order[hits]  # front to back
            ys, xs = torch.meshgrid(torch.arange(y0, y1, device=device), torch.arange(x0, x1, device=device),
                                    indexing="ij")  # fmt: skip
            pixels = torch.stack([xs, ys], dim=-1).to(means2d.dtype) + 0.5  # pixel centres, as gsplat's kernel
            offsets = means2d[ids][None, None] - pixels[:, :, None]  # [h, w, M, 2]: gsplat's delta = xy - px
            conic = conics[ids]
            sigma = 0.5 * (conic[:, 0] * offsets[..., 0] ** 2 + conic[:, 2] * offsets[..., 1] ** 2) + conic[:, 1] * (
                offsets[..., 0] * offsets[..., 1]
            )
            alpha = torch.clamp(opacity[ids] * torch.exp(-sigma), max=ALPHA_MAX)
            alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
            after = torch.cumprod(1 - alpha, dim=-1)  # transmittance after each Gaussian
            before = torch.cat([torch.ones_like(after[..., :1]), after[..., :-1]], dim=-1)
            blended = alpha * before * (after > TRANSMITTANCE_MIN)  # gsplat stops before T drops to 1e-4
            row.append((blended @ features[ids], blended.sum(dim=-1, keepdim=True)))
            pieces.append((offsets, ids))
        rows.append(row)
    image = torch.cat([torch.cat([tile[0] for tile in row], dim=1) for row in rows], dim=0)
    alpha_image = torch.cat([torch.cat([tile[1] for tile in row], dim=1) for row in rows], dim=0)
    return image, alpha_image, pieces


def _tile_ranges(means2d: Tensor, radii: Tensor, width: int, height: int) -> Tuple[Tensor, Tensor]:
    """The tiles [low, high) of each Gaussian's 3-sigma box, as gsplat's tile intersection computes them."""
    tile_width, tile_height = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    centre, radius = means2d / TILE_SIZE, radii[:, None].to(means2d.dtype) / TILE_SIZE
    low, high = torch.floor(centre - radius).int(), torch.ceil(centre + radius).int()
    low = torch.stack([low[:, 0].clamp(0, tile_width), low[:, 1].clamp(0, tile_height)], dim=-1)
    high = torch.stack([high[:, 0].clamp(0, tile_width), high[:, 1].clamp(0, tile_height)], dim=-1)
    return low, high


def _track_absgrad(means2d: Tensor, pieces_per_camera: list) -> None:
    """Gives `means2d` an `absgrad` in back-propagation: per camera and Gaussian, the sum over pixels of the
    absolute gradient that each pixel sends to the Gaussian's screen position (gsplat's `absgrad=True`)."""
    means2d.absgrad = torch.zeros_like(means2d.detach())

    def hook(camera: int, ids: Tensor):
        def record(grad: Tensor) -> None:
            means2d.absgrad[camera].index_add_(0, ids, grad.abs().sum(dim=(0, 1)))

        return record

    for camera, pieces in enumerate(pieces_per_camera):
        for offsets, ids in pieces:
            if offsets.requires_grad:
                offsets.register_hook(hook(camera, ids))
