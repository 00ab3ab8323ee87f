"""Image conventions in one place: how any PIL image is read as 8-bit (every input: a scene's images, the
image editor's), and how a float image is written as 8-bit (every output).

Reading (:func:`to_8bit`): 16-bit grey (I;16, I;16B, I;16L, I;16N, and I, read as 16-bit) is divided by 257
and rounded (16-bit RGB(A) PNGs already arrive as 8-bit from PIL); float images (F) are clipped to [0, 1],
NaN becoming 0; every other mode is converted by PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jaxtyping import Float
from PIL import Image
from torch import Tensor

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
"""Grey modes read as 16-bit values (0 to 65535)."""


def to_8bit(image: Image.Image, alpha: bool) -> Image.Image:
    """`image` as an 8-bit RGBA image when `alpha`, else RGB, by the reading rules of the module docstring."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.round(np.clip(values, 0, 65535) / 257).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        image = Image.fromarray(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8))
    target = "RGBA" if alpha else "RGB"
    return image if image.mode == target else image.convert(target)


def save_png(image: Float[Tensor, "height width 3"], path: Path) -> None:
    """Writes an HWC image in [0, 1] as an 8-bit PNG (rounded, clamped), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
