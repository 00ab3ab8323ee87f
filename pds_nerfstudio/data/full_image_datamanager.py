"""nerfstudio's FullImageDatamanager (splatfacto trains on whole images) with editable training images.

nerfstudio 1.1.5 caches every training image once (`cached_train`, float32 on the training device) and hands
out one whole image and its camera per step; replacing a cached image changes what the next steps see.
Images are read and downscaled in memory as the ray datamanager reads them
(:class:`pds_nerfstudio.data.datamanager.EditableImages`); the scene folder is never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional, Type, Union

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig

from pds_nerfstudio.data.datamanager import EditableImages, check_max_image_size, read_original_images
from pds_nerfstudio.data.dataset import PDSInputDataset


@dataclass
class PDSFullImageDataManagerConfig(FullImageDatamanagerConfig):
    """Full-image datamanager with every training image cached and replaceable."""

    _target: Type = field(default_factory=lambda: PDSFullImageDataManager)
    cache_images: Literal["cpu", "gpu"] = "gpu"
    """Where the images are cached: "gpu" means the training device (the CPU when there is no GPU; nerfstudio's
    "cpu" pins memory, which needs CUDA)."""
    cache_images_type: Literal["float32"] = "float32"
    """Cached as float32: edited images are renders and SDEdits, not 8-bit photographs."""
    max_image_size: Optional[int] = 1024
    """Longest image side in memory: larger images and their cameras are downscaled when loaded, never on disk.
    None keeps full resolution."""


class PDSFullImageDataManager(FullImageDatamanager[PDSInputDataset], EditableImages):
    """Hands out whole training images from an in-memory, editable cache (splatfacto)."""

    config: PDSFullImageDataManagerConfig

    def __init__(
        self,
        config: PDSFullImageDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ) -> None:
        check_max_image_size(config.max_image_size)
        read_original_images(config.dataparser)
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)
        self._originals: Optional[List[Tensor]] = None

    def create_train_dataset(self) -> PDSInputDataset:
        return self.scaled_dataset(self.train_dataparser_outputs, announce=True)

    def create_eval_dataset(self) -> PDSInputDataset:
        return self.scaled_dataset(self.dataparser.get_dataparser_outputs(split=self.test_split))

    @property
    def num_train_images(self) -> int:
        return len(self.train_dataset)

    def _slot(self, index: int) -> Float[Tensor, "height width channels"]:
        return self.cached_train[index]["image"]

    def _original(self, index: int) -> Float[Tensor, "height width channels"]:
        if self._originals is None:
            self._originals = [data["image"].clone() for data in self.cached_train]
        return self._originals[index]

    def replace_image(self, index: int, image: Float[Tensor, "height width channels"]) -> None:
        self._original(index)  # the originals are copied before the first replacement
        super().replace_image(index, image)
