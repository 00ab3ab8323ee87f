"""A VanillaDataManager whose training images can be replaced in memory (stage 2 of an edit).

As Instruct-NeRF2NeRF does, all training images are cached once and rays are sampled from that
cache, so replacing one image changes what the next ray batches see. The scene folder on disk
is never written; the original images stay available as the source of the edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Type

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig


@dataclass
class PDSDataManagerConfig(VanillaDataManagerConfig):
    """Vanilla data manager with every training image cached and replaceable."""

    _target: Type = field(default_factory=lambda: PDSDataManager)
    train_num_images_to_sample_from: int = -1
    """Images to cache; must stay -1 (all), since edited images live in that cache."""
    train_num_times_to_repeat_images: int = -1
    """Never reload images from disk: that would undo the edits."""


class PDSDataManager(VanillaDataManager):
    """Samples training rays from an in-memory, editable copy of all training images."""

    config: PDSDataManagerConfig

    def setup_train(self) -> None:
        super().setup_train()
        self.image_batch: Dict[str, Tensor] = next(self.iter_train_image_dataloader)
        self.original_images: Float[Tensor, "num_images height width channels"] = self.image_batch["image"].clone()
        # The cache holds the images in a random order; remember where each dataset index lives.
        order = self.image_batch["image_idx"].tolist()
        self._position = {image_index: position for position, image_index in enumerate(order)}

    @property
    def num_train_images(self) -> int:
        return len(self._position)

    def next_train(self, step: int) -> Tuple[RayBundle, Dict]:
        self.train_count += 1
        assert self.train_pixel_sampler is not None
        batch = self.train_pixel_sampler.sample(self.image_batch)
        return self.train_ray_generator(batch["indices"]), batch

    def original_image(self, index: int) -> Float[Tensor, "height width channels"]:
        """Training image `index` (dataset order) as it was loaded from the scene."""
        return self.original_images[self._position[index]]

    def current_image(self, index: int) -> Float[Tensor, "height width channels"]:
        """Training image `index` as training sees it now."""
        return self.image_batch["image"][self._position[index]]

    def replace_image(self, index: int, image: Float[Tensor, "height width channels"]) -> None:
        """Makes training see `image` in place of training image `index` from now on."""
        target = self.image_batch["image"][self._position[index]]
        if image.shape != target.shape:
            raise ValueError(f"replacement image has shape {tuple(image.shape)}, expected {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(image.to(target))

    def restore_originals(self) -> None:
        """Undoes every replacement."""
        self.image_batch["image"].copy_(self.original_images)
