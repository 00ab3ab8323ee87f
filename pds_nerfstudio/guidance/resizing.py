"""Images between a scene's resolution and the prior's: the short side at the prior's native size."""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def prior_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
    """(height, width) scaled so the short side is `short_side`, each rounded to `multiple`."""
    scale = short_side / min(height, width)
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


def to_prior_input(image: Float[Tensor, "height width 3"], size: tuple[int, int]) -> Float[Tensor, "1 3 h w"]:
    """An HWC image in [0, 1] as the prior's NCHW input of `size` (antialiased when shrinking)."""
    nchw = image.permute(2, 0, 1)[None]
    if tuple(nchw.shape[-2:]) == size:
        return nchw
    return F.interpolate(nchw, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def from_prior_output(image: Float[Tensor, "1 3 h w"], size: tuple[int, int]) -> Float[Tensor, "height width 3"]:
    """The prior's NCHW image back to an HWC image of `size`."""
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    return image[0].permute(1, 2, 0).clamp(0, 1)
