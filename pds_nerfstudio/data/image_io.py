"""Writing images: one place for the float-to-8-bit convention used by every output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from jaxtyping import Float
from PIL import Image
from torch import Tensor


def save_png(image: Float[Tensor, "height width 3"], path: Path) -> None:
    """Writes an HWC image in [0, 1] as an 8-bit PNG (rounded, clamped), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
