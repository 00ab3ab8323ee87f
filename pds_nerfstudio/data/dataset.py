"""nerfstudio's InputDataset for images of any common PIL mode, read as 8-bit RGB or RGBA.

nerfstudio 1.1.5 casts whatever PIL opens to uint8: 16-bit images wrap around, float images
truncate, palette images become their indices, CMYK keeps 4 channels read as RGBA, and a scene
mixing RGB and RGBA images fails to stack (LA fails an assertion). Here every image becomes 8-bit, scaled
(:func:`pds_nerfstudio.data.image_io.to_8bit`, which the image editor reads its input with too):

- RGB and RGBA stay as they are; transparency is kept as alpha (nerfstudio composites it).
- 16-bit grey (I;16, I;16B, I;16L, I;16N, and I, read as 16-bit) is divided by 257 and rounded;
  16-bit RGB(A) PNGs already arrive as 8-bit from PIL (their high byte: within 1/255).
- Float images (F) are clipped to [0, 1]; NaN becomes 0.
- Every other mode (L, LA, 1, P, PA, CMYK, YCbCr, LAB, HSV, RGBX, RGBa) is converted by PIL;
  one it cannot convert is refused with a message naming the file (:func:`read_image`).
- When any image of the dataset has transparency, all of it is RGBA (opaque where none), so
  that the images stack.

Images are then resized by `scale_factor` exactly as nerfstudio's base class does.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from nerfstudio.data.datasets.base_dataset import InputDataset

from pds_nerfstudio.data.image_io import to_8bit


def has_transparency(path: Path) -> bool:
    """Whether the image at `path` has transparency (alpha or a transparent colour); reads its header only.

    False for a file PIL cannot open: reading it reports that (:func:`read_image`).
    """
    try:
        with Image.open(path) as image:
            return image.has_transparency_data
    except Exception:  # noqa: BLE001 - read_image names the broken file
        return False


def read_image(path: Path, alpha: bool) -> Image.Image:
    """Decodes the image at `path` as 8-bit RGB(A); ValueError naming the file when it cannot."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_8bit(image, alpha)
    except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
        raise ValueError(
            f"image {path} cannot be read ({error}): replace it with an 8-bit PNG or JPEG "
            "or remove its frame from transforms.json"
        ) from None


class PDSInputDataset(InputDataset):
    """InputDataset whose images are 8-bit RGB or RGBA whatever their mode (see the module docstring)."""

    @cached_property
    def has_alpha(self) -> bool:
        """Whether any image of the dataset has transparency (then every image is read as RGBA)."""
        return any(has_transparency(path) for path in self.image_filenames)

    def get_numpy_image(self, image_idx: int) -> npt.NDArray[np.uint8]:
        """Image `image_idx` as uint8 of shape (H, W, 3 or 4), resized by `scale_factor`."""
        pil_image = read_image(self.image_filenames[image_idx], self.has_alpha)
        if self.scale_factor != 1.0:
            width, height = pil_image.size
            newsize = (int(width * self.scale_factor), int(height * self.scale_factor))
            pil_image = pil_image.resize(newsize, resample=Image.Resampling.BILINEAR)
        return np.array(pil_image, dtype=np.uint8)
