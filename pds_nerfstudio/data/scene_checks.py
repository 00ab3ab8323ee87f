"""Checks of a user's scene folder (nerfstudio format), run before the prior or the scene loads.

:func:`validate_scene` refuses what would otherwise fail deep inside nerfstudio, or train on
wrong data, with one ValueError whose message names the fix. It reads transforms.json and each
image's header (size and mode) and verifies PNG checksums, but decodes no image: a 65-image
scene takes milliseconds. An image that only fails when decoded (a truncated JPEG) is reported
as clearly when the datamanager loads it (:func:`pds_nerfstudio.data.dataset.read_image`).

Accepted: one image size for the whole scene, square or not, with a short side of at least
:data:`MIN_IMAGE_SIDE` (the pipeline resizes every view to the prior's resolution, so small
views are upsampled; the datamanager downscales large ones in memory, see
``PDSDataManagerConfig.max_image_size``), in any mode that :mod:`pds_nerfstudio.data.dataset`
reads (RGB, RGBA, grey, palette, 16-bit, float, CMYK, ...).
Nothing under the scene folder is ever written.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

import numpy as np
from PIL import Image

MIN_IMAGE_SIDE = 16
"""Shortest image side accepted, in pixels: two cells of the prior's latent grid (1/8 of the image).

Smaller views hold too little to edit; views from this size up to the prior's resolution (512 px
for Stable Diffusion 1.5) are upsampled to it, which blurs but works."""

INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
"""Camera keys that nerfstudio's dataparser needs, for the whole file or in every frame."""

PROCESS_HINT = (
    "a folder of images or COLMAP output must first go through `ns-process-data` "
    "(e.g. `ns-process-data images --data IMAGES --output-dir SCENE`)"
)


class Header(NamedTuple):
    """What an image file's header says."""

    path: Path
    size: Tuple[int, int]


def validate_scene(data: Path) -> None:
    """Raises ValueError naming the fix when `data` is not a usable nerfstudio scene.

    `data` is the scene folder (or its transforms.json, as nerfstudio also accepts).
    """
    transforms = transforms_path(Path(data))
    meta = read_transforms(transforms)
    frames: List[Dict[str, Any]] = meta["frames"]
    check_frames(meta, frames, transforms)
    root = transforms.parent
    images = [root / frame["file_path"] for frame in frames]
    masks = [root / frame["mask_path"] for frame in frames if "mask_path" in frame]
    check_files_exist(images + masks, transforms)
    headers = [read_header(path) for path in images]
    check_sizes(headers, root)
    check_camera_sizes(meta, frames, headers, root)


def transforms_path(data: Path) -> Path:
    """The transforms.json of scene `data`."""
    if not data.exists():
        raise ValueError(f"scene folder {data} does not exist: set --data to a nerfstudio scene folder")
    if data.is_file():
        if data.suffix == ".json":
            return data
        raise ValueError(
            f"--data {data} is a file, not a folder: set --data to the scene folder that holds transforms.json"
        )
    transforms = data / "transforms.json"
    if not transforms.is_file():
        raise ValueError(
            f"scene folder {data} has no transforms.json: set --data to a nerfstudio scene folder; {PROCESS_HINT}"
        )
    return transforms


def read_transforms(transforms: Path) -> Dict[str, Any]:
    """transforms.json as a dict with a non-empty list of frames."""
    try:
        meta = json.loads(transforms.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{transforms} cannot be read as JSON ({error}): fix it, or re-create it with `ns-process-data`"
        ) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise ValueError(
            f"{transforms} lists no frames (it needs a non-empty \"frames\" list): re-create it with `ns-process-data` "
            "from the scene's images"
        )
    return meta


def check_frames(meta: Dict[str, Any], frames: List[Any], transforms: Path) -> None:
    """Every frame is an object with an image path, a camera pose and (with the file's) all intrinsics."""
    for index, frame in enumerate(frames):
        name = f"frame {index} of {transforms}"
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise ValueError(f"{name} has no \"file_path\": give each frame the path of its image")
        if not is_pose(frame.get("transform_matrix")):
            raise ValueError(
                f"{name} ({frame['file_path']}) has no valid \"transform_matrix\" (a 4x4 camera-to-world matrix): "
                f"add it, or re-create transforms.json with `ns-process-data`"
            )
        missing = [key for key in INTRINSICS if key not in meta and key not in frame]
        if missing:
            raise ValueError(
                f"{name} ({frame['file_path']}) lacks {', '.join(missing)}, and the file gives none for all frames: "
                "add them, or re-create transforms.json with `ns-process-data`"
            )


def is_pose(value: Any) -> bool:
    """Whether `value` is a finite 4x4 (or 3x4) matrix."""
    try:
        matrix = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return matrix.shape in ((4, 4), (3, 4)) and bool(np.isfinite(matrix).all())


def check_files_exist(paths: List[Path], transforms: Path) -> None:
    """Every file that transforms.json lists exists."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(paths)} files listed in {transforms} are missing, e.g. {missing[0]}: "
            "restore them, or remove their frames from transforms.json"
        )


def read_header(path: Path) -> Header:
    """Size of the image at `path`, read from its header (PNG checksums verified, nothing decoded)."""
    try:
        with Image.open(path) as image:
            header = Header(path, image.size)
            image.verify()
    except Exception as error:  # noqa: BLE001 - PIL raises many types for broken files
        raise ValueError(
            f"image {path} cannot be read ({type(error).__name__}: {error}): replace it with a PNG or JPEG "
            "image, or remove its frame from transforms.json"
        ) from None
    return header


def check_sizes(headers: List[Header], root: Path) -> None:
    """All images share one size, with a short side of at least MIN_IMAGE_SIDE."""
    by_size: Dict[Tuple[int, int], List[Path]] = defaultdict(list)
    for header in headers:
        by_size[header.size].append(header.path)
    if len(by_size) > 1:
        ranked = sorted(by_size.items(), key=lambda item: -len(item[1]))
        seen = ", ".join(
            f"{width}x{height} ({_count(len(paths))}, e.g. {_shown(paths[0], root)})"
            for (width, height), paths in ranked
        )
        raise ValueError(
            f"the scene's images have {len(by_size)} different sizes: {seen}. Every view must have the same size: "
            "resize them all to one size (keeping fl_x, fl_y, cx, cy, w, h in transforms.json in step), "
            "or split them into one scene folder per size"
        )
    (width, height), paths = next(iter(by_size.items()))
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"the scene's images are {width}x{height} (e.g. {_shown(paths[0], root)}), "
            f"smaller than {MIN_IMAGE_SIDE} px on their short side: too small to edit; "
            f"use images of at least {MIN_IMAGE_SIDE} px (ideally 512 px, the prior's resolution)"
        )


def check_camera_sizes(meta: Dict[str, Any], frames: List[Dict[str, Any]], headers: List[Header], root: Path) -> None:
    """The w and h of transforms.json match the images (nerfstudio would cast rays for the wrong pixels)."""
    wrong = [
        (header, size) for frame, header in zip(frames, headers) if (size := _camera_size(meta, frame)) != header.size
    ]
    if wrong:
        header, (width, height) = wrong[0]
        raise ValueError(
            f"transforms.json gives {width}x{height} (w x h) for {_count(len(wrong))} that are "
            f"{header.size[0]}x{header.size[1]}, e.g. {_shown(header.path, root)}: scale w, h, fl_x, fl_y, cx, cy "
            "in transforms.json to the images' size, or re-create it with `ns-process-data`"
        )


def _camera_size(meta: Dict[str, Any], frame: Dict[str, Any]) -> Tuple[int, int]:
    """(w, h) of `frame`'s camera: its own or the file's."""
    return int(frame.get("w", meta.get("w"))), int(frame.get("h", meta.get("h")))


def _count(number: int) -> str:
    """'1 image', '2 images', ..."""
    return f"{number} image{'s' if number != 1 else ''}"


def _shown(path: Path, root: Path) -> str:
    """`path` relative to the scene folder when it lies inside, for shorter messages."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
