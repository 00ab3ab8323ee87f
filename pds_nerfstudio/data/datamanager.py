"""Datamanagers whose training images can be replaced in memory (stage 2 of an edit): rays (nerfacto) here,
full images (splatfacto) in :mod:`pds_nerfstudio.data.full_image_datamanager`.

As Instruct-NeRF2NeRF does, all training images are cached once and rays are sampled from that
cache, so replacing one image changes what the next ray batches see. The scene folder on disk
is never written; the original images stay available as the source of the edit.

Images of any common mode are read as 8-bit RGB or RGBA (:mod:`pds_nerfstudio.data.dataset`). Large
images are downscaled in memory, cameras with them, to `max_image_size`; nerfstudio's own
automatic downscaling is turned off, since it reads pre-made `images_N/` folders (which may be
stale) and, for COLMAP scenes, offers to write them into the scene folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, Tuple, Type, Union

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.rays import RayBundle
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager, VanillaDataManagerConfig
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig, DataparserOutputs
from nerfstudio.utils.rich_utils import CONSOLE

from pds_nerfstudio.data.dataset import PDSInputDataset
from pds_nerfstudio.data.scene_checks import MIN_IMAGE_SIDE


class EditableImages:
    """Training images that the edit can replace in memory, by dataset index; the originals stay available.

    A datamanager mixes this in and says where an image lives (:meth:`_slot`) and where its original copy is
    (:meth:`_original`); `max_image_size` downscales images (and cameras) in memory when they are loaded.
    """

    config: Any
    train_dataparser_outputs: DataparserOutputs

    @property
    def num_train_images(self) -> int:
        raise NotImplementedError

    def _slot(self, index: int) -> Float[Tensor, "height width channels"]:
        raise NotImplementedError

    def _original(self, index: int) -> Float[Tensor, "height width channels"]:
        raise NotImplementedError

    def original_image(self, index: int) -> Float[Tensor, "height width channels"]:
        """Training image `index` (dataset order) as it was loaded from the scene."""
        return self._original(index)

    def current_image(self, index: int) -> Float[Tensor, "height width channels"]:
        """Training image `index` as training sees it now."""
        return self._slot(index)

    def replace_image(self, index: int, image: Float[Tensor, "height width channels"]) -> None:
        """Makes training see `image` in place of training image `index` from now on."""
        target = self._slot(index)
        if image.shape != target.shape:
            raise ValueError(f"replacement image has shape {tuple(image.shape)}, expected {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(image.to(target))

    def scaled_dataset(self, outputs: DataparserOutputs, announce: bool = False) -> PDSInputDataset:
        """The dataset of `outputs`, its images and cameras scaled to fit `max_image_size`."""
        sides = torch.cat([outputs.cameras.width, outputs.cameras.height])
        scale = in_memory_scale(sides, self.config.camera_res_scale_factor, self.config.max_image_size)
        dataset = PDSInputDataset(dataparser_outputs=outputs, scale_factor=scale)
        if announce and scale != self.config.camera_res_scale_factor:
            cameras = outputs.cameras
            CONSOLE.print(
                f"Images of {int(cameras.width[0])}x{int(cameras.height[0])} are used at "
                f"{int(dataset.cameras.width[0])}x{int(dataset.cameras.height[0])}, downscaled in memory "
                f"(--pipeline.datamanager.max-image-size {self.config.max_image_size}); the scene folder is unchanged"
            )
        return dataset


def check_max_image_size(max_image_size: Optional[int]) -> None:
    """Refuses a `max_image_size` below what the prior can use."""
    if max_image_size is not None and max_image_size < MIN_IMAGE_SIDE:
        raise ValueError(
            f"--pipeline.datamanager.max-image-size must be at least {MIN_IMAGE_SIDE} "
            f"(or None for full resolution), got {max_image_size}"
        )


@dataclass
class PDSDataManagerConfig(VanillaDataManagerConfig):
    """Vanilla data manager with every training image cached and replaceable."""

    _target: Type = field(default_factory=lambda: PDSDataManager)
    train_num_images_to_sample_from: int = -1
    """Images to cache; must stay -1 (all), since edited images live in that cache."""
    train_num_times_to_repeat_images: int = -1
    """Never reload images from disk: that would undo the edits."""
    max_image_size: Optional[int] = 1024
    """Longest image side in memory: larger images and their cameras are downscaled when loaded, never on disk
    (at 1024, 65 views of 1024x768 take 1.2 GB: the cache and its originals). None keeps full resolution."""


class PDSDataManager(VanillaDataManager[PDSInputDataset], EditableImages):
    """Samples training rays from an in-memory, editable copy of all training images (nerfacto)."""

    config: PDSDataManagerConfig

    def __init__(
        self,
        config: PDSDataManagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        **kwargs,
    ) -> None:
        check_max_image_size(config.max_image_size)
        read_original_images(config.dataparser)
        super().__init__(config, device, test_mode, world_size, local_rank, **kwargs)

    def create_train_dataset(self) -> PDSInputDataset:
        return self.scaled_dataset(self.train_dataparser_outputs, announce=True)

    def create_eval_dataset(self) -> PDSInputDataset:
        return self.scaled_dataset(self.dataparser.get_dataparser_outputs(split=self.test_split))

    def setup_train(self) -> None:
        super().setup_train()
        batch: Dict[str, Tensor] = next(self.iter_train_image_dataloader)
        # nerfstudio's cache holds the images in the order random.sample drew: sorted by dataset index instead, the
        # rays a seed draws do not depend on the draws before the cache was filled (a resumed run draws the same).
        order = torch.argsort(batch["image_idx"])
        self.image_batch = {key: value[order] if isinstance(value, Tensor) and value.shape[:1] == order.shape else value
                            for key, value in batch.items()}  # fmt: skip
        self.original_images: Float[Tensor, "num_images height width channels"] = self.image_batch["image"].clone()
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

    def _slot(self, index: int) -> Float[Tensor, "height width channels"]:
        return self.image_batch["image"][self._position[index]]

    def _original(self, index: int) -> Float[Tensor, "height width channels"]:
        return self.original_images[self._position[index]]


def read_original_images(dataparser: DataParserConfig) -> None:
    """Turns nerfstudio's automatic downscaling (`downscale_factor` None) into reading the original images.

    The nerfstudio dataparser would read pre-made `images_N/` folders of images over 1600 px, and
    the COLMAP one offers to write them into the scene folder; `max_image_size` downscales in
    memory instead. An explicit `downscale_factor` is kept.
    """
    if getattr(dataparser, "downscale_factor", 1) is None:
        dataparser.downscale_factor = 1  # type: ignore[attr-defined]


def in_memory_scale(sides: Tensor, scale: float, max_side: Optional[int]) -> float:
    """Scale factor for images whose sides are `sides`: `scale`, or less where the longest side exceeds `max_side`.

    A reduced factor brings the longest side to exactly `max_side`, and is chosen so that
    nerfstudio's image resize (`int(side * factor)` in Python floats) and camera rescale
    (float32 tensors) truncate every side to the same number of pixels.
    """
    longest = int(sides.max()) if sides.numel() else 0
    if max_side is None or longest * scale <= max_side:
        return scale
    factor = (max_side + 0.5) / longest
    while not _truncations_agree(sides, factor):
        factor *= 1 + 1e-6  # moves every product past float32's rounding error (about 6e-8 of it)
    return factor


def _truncations_agree(sides: Tensor, factor: float) -> bool:
    """Whether `Cameras.rescale_output_resolution(factor)` and `InputDataset`'s resize give the same sizes."""
    camera_sides = (sides * torch.tensor([factor])).to(torch.int64).flatten()
    image_sides = torch.tensor([int(side * factor) for side in sides.flatten().tolist()], dtype=torch.int64)
    return torch.equal(camera_sides, image_sides)
