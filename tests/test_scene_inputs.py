"""Scene input handling: bad scenes refused with a message that names the fix, unusual images read.

- `validate_scene` on small procedural scenes broken one way each.
- `PDSInputDataset` on the same scenes with their images re-saved in other modes (RGBA, LA, L,
  P, 16-bit, float, CMYK, mixed), values checked against the originals.
- `PDSDataManager` on 2000x2000 images: downscaled in memory, scene folder byte-for-byte unchanged.
- One `ns-train pds` run on a missing folder: one-line error, non-zero exit, no traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
import pytest
import torch
import waiting
from conftest import folder_snapshot
from PIL import Image

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs
from nerfstudio.data.datasets.base_dataset import InputDataset
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from pds_nerfstudio.data.datamanager import PDSDataManager, PDSDataManagerConfig, in_memory_scale
from pds_nerfstudio.data.dataset import PDSInputDataset
from pds_nerfstudio.synthetic.procedural_scene import make_scene
from pds_nerfstudio.data.scene_checks import validate_scene

NUM_VIEWS = 8


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A valid 32x32 scene of 8 views, ours to break."""
    path = tmp_path / "scene"
    make_scene(path, size=32, num_views=NUM_VIEWS)
    return path


def image_paths(scene: Path) -> List[Path]:
    """The scene's images, in file name order."""
    return sorted((scene / "images").glob("*.png"))


def edit_transforms(scene: Path, edit: Callable[[dict], None]) -> None:
    """Applies `edit` to the scene's transforms.json."""
    meta = json.loads((scene / "transforms.json").read_text())
    edit(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------ validate_scene


def test_valid_scene_passes_reading_headers_only(scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("validate_scene decoded an image")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    validate_scene(scene)
    validate_scene(scene / "transforms.json")


def delete_images(scene: Path) -> None:
    """Removes 3 of the images."""
    for path in image_paths(scene)[2:5]:
        path.unlink()


def garble_image(scene: Path) -> None:
    """Replaces one image by bytes that are no image."""
    image_paths(scene)[3].write_bytes(b"not an image at all")


def truncate_png(scene: Path) -> None:
    """Cuts the end (last pixel data, IEND) off one PNG."""
    path = image_paths(scene)[3]
    path.write_bytes(path.read_bytes()[:-40])


def resize_one(scene: Path) -> None:
    """Gives one image another size."""
    path = image_paths(scene)[-1]
    Image.open(path).resize((48, 40)).save(path)


def shrink_all(scene: Path) -> None:
    """Makes every image (and the cameras) 12x12."""
    for path in image_paths(scene):
        Image.open(path).resize((12, 12)).save(path)
    edit_transforms(scene, lambda meta: meta.update(w=12, h=12))


BROKEN_SCENES = {
    "no transforms.json": (
        lambda scene: (scene / "transforms.json").unlink(),
        ["has no transforms.json", "COLMAP output must first go through `ns-process-data`"],
    ),
    "invalid JSON": (
        lambda scene: (scene / "transforms.json").write_text("{"),
        ["cannot be read as JSON", "line 1 column 2", "ns-process-data"],
    ),
    "no frames": (lambda scene: edit_transforms(scene, lambda meta: meta.update(frames=[])), ["lists no frames"]),
    "frame without pose": (
        lambda scene: edit_transforms(scene, lambda meta: meta["frames"][1].pop("transform_matrix")),
        ["frame 1", "transform_matrix"],
    ),
    "no focal length": (
        lambda scene: edit_transforms(scene, lambda meta: meta.pop("fl_x")),
        ["lacks fl_x", "add them"],
    ),
    "missing images": (delete_images, [f"3 of {NUM_VIEWS} files", "are missing, e.g.", "remove their frames"]),
    "not an image": (garble_image, ["cannot be read", "replace it"]),
    "truncated PNG": (truncate_png, ["cannot be read", "replace it"]),
    "mixed sizes": (resize_one, ["2 different sizes", "32x32 (7 images", "48x40 (1 image,", "resize them"]),
    "too small": (shrink_all, ["12x12", "smaller than 16 px", "at least 16 px"]),
    "w and h wrong": (
        lambda scene: edit_transforms(scene, lambda meta: meta.update(w=64)),
        ["gives 64x32 (w x h) for 8 images that are 32x32", "scale w, h"],
    ),
}


@pytest.mark.parametrize("case", BROKEN_SCENES, ids=list(BROKEN_SCENES))
def test_broken_scene_is_refused_with_its_fix(scene: Path, case: str) -> None:
    break_scene, expected = BROKEN_SCENES[case]
    break_scene(scene)
    with pytest.raises(ValueError) as error:
        validate_scene(scene)
    message = str(error.value)
    assert all(text in message for text in expected), message
    assert "\n" not in message


def test_missing_folder_and_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist: set --data"):
        validate_scene(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder: set --data"):
        validate_scene(tmp_path / "notes.txt")


# ------------------------------------------------------------------ PDSInputDataset


def dataparser_outputs(scene: Path) -> DataparserOutputs:
    """nerfstudio's parse of the scene's training split, full resolution."""
    return NerfstudioDataParserConfig(data=scene, downscale_factor=1).setup().get_dataparser_outputs("train")


def originals(scene: Path) -> Dict[str, np.ndarray]:
    """The scene's images as PIL reads them, by file name."""
    return {path.name: np.array(Image.open(path)) for path in image_paths(scene)}


def load_all(scene: Path) -> Dict[str, np.ndarray]:
    """Every training image as PDSInputDataset reads it, by file name."""
    outputs = dataparser_outputs(scene)
    dataset = PDSInputDataset(outputs)
    return {Path(name).name: dataset.get_numpy_image(i) for i, name in enumerate(outputs.image_filenames)}


def resave(scene: Path, convert: Callable[[np.ndarray, int], Image.Image], image_format: str = "PNG") -> None:
    """Replaces every image by `convert(rgb, index)`, in `image_format` (file names unchanged)."""
    for index, path in enumerate(image_paths(scene)):
        convert(np.array(Image.open(path)), index).save(path, format=image_format)


def grey(rgb: np.ndarray) -> np.ndarray:
    """PIL's luminance of `rgb`."""
    return np.array(Image.fromarray(rgb).convert("L"))


def ramp(rgb: np.ndarray) -> np.ndarray:
    """An alpha channel with every value from 0 to 255 somewhere."""
    return (np.arange(rgb.shape[0] * rgb.shape[1]) % 256).reshape(rgb.shape[:2]).astype(np.uint8)


def test_rgb_is_read_as_nerfstudio_reads_it(scene: Path) -> None:
    outputs = dataparser_outputs(scene)
    for scale in (1.0, 0.5):
        ours, stock = PDSInputDataset(outputs, scale_factor=scale), InputDataset(outputs, scale_factor=scale)
        for i in range(len(ours)):
            np.testing.assert_array_equal(ours.get_numpy_image(i), stock.get_numpy_image(i))
    assert ours.get_numpy_image(0).shape == (16, 16, 3)


def test_rgba_and_la_keep_their_alpha(scene: Path) -> None:
    expected = {name: np.dstack([rgb, ramp(rgb)]) for name, rgb in originals(scene).items()}
    resave(scene, lambda rgb, _: Image.fromarray(np.dstack([rgb, ramp(rgb)]), "RGBA"))
    for name, image in load_all(scene).items():
        np.testing.assert_array_equal(image, expected[name])
    resave(scene, lambda rgba, _: Image.fromarray(rgba, "RGBA").convert("LA"))
    for name, image in load_all(scene).items():
        assert image.shape == (32, 32, 4)
        np.testing.assert_array_equal(image[..., 3], ramp(image))
        np.testing.assert_array_equal(image[..., :3], np.repeat(grey(expected[name][..., :3])[..., None], 3, axis=2))


def test_grey_cmyk_and_16_bit_rgb(scene: Path) -> None:
    rgbs = originals(scene)
    greys = {name: np.repeat(grey(rgb)[..., None], 3, axis=2) for name, rgb in rgbs.items()}
    resave(scene, lambda rgb, _: Image.fromarray(grey(rgb)))
    assert all(np.array_equal(image, greys[name]) for name, image in load_all(scene).items())
    for path in image_paths(scene):  # back to RGB, then CMYK as TIFF under the same names
        Image.fromarray(rgbs[path.name]).convert("CMYK").save(path, format="TIFF")
    assert all(np.array_equal(image, rgbs[name]) for name, image in load_all(scene).items())
    for path in image_paths(scene):  # 16-bit RGB PNG (cv2 writes BGR); PIL reads its high bytes
        rgb16 = rgbs[path.name].astype(np.uint16) * 257 + np.uint16(100)
        assert cv2.imwrite(str(path.with_suffix(".tmp.png")), rgb16[..., ::-1])
        path.with_suffix(".tmp.png").replace(path)
    for name, image in load_all(scene).items():
        assert image.shape == (32, 32, 3)
        assert np.abs(image.astype(float) - (rgbs[name].astype(float) * 257 + 100) / 257).max() <= 1


@pytest.mark.parametrize(
    "mode, image_format", [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF")], ids=["I;16 PNG", "I;16B TIFF", "I TIFF"]
)
def test_16_bit_grey_is_scaled_not_truncated(scene: Path, mode: str, image_format: str) -> None:
    greys = {name: grey(rgb) for name, rgb in originals(scene).items()}
    resave(scene, lambda rgb, _: Image.fromarray(grey(rgb).astype(np.int32) * 257).convert(mode), image_format)
    assert Image.open(image_paths(scene)[0]).mode == mode
    for name, image in load_all(scene).items():
        np.testing.assert_array_equal(image, np.repeat(greys[name][..., None], 3, axis=2))


def test_float_images_are_clipped(scene: Path) -> None:
    def to_float(rgb: np.ndarray, _: int) -> Image.Image:
        values = grey(rgb).astype(np.float32) / 255
        values[0, :3] = (-0.5, 1.5, np.nan)
        return Image.fromarray(values, "F")

    resave(scene, to_float, "TIFF")
    for image in load_all(scene).values():
        np.testing.assert_array_equal(image[0, :3, 0], [0, 255, 0])
        assert image.shape == (32, 32, 3)


def test_palette_images_with_and_without_transparency(scene: Path) -> None:
    resave(scene, lambda rgb, _: Image.fromarray(rgb).quantize(16))
    palettes = {path.name: Image.open(path) for path in image_paths(scene)}
    lookups = {name: np.array(p.getpalette()).reshape(-1, 3)[np.array(p)] for name, p in palettes.items()}
    assert all(np.array_equal(image, lookups[name]) for name, image in load_all(scene).items())
    for path in image_paths(scene):
        palette = Image.open(path)
        palette.save(path, transparency=0)
    for name, image in load_all(scene).items():
        transparent = np.array(palettes[name]) == 0
        np.testing.assert_array_equal(image[..., 3], np.where(transparent, 0, 255))
        np.testing.assert_array_equal(image[~transparent][:, :3], lookups[name][~transparent])


def test_rgb_and_rgba_mixed_are_all_read_as_rgba(scene: Path) -> None:
    rgbs = originals(scene)
    resave(scene, lambda rgb, i: Image.fromarray(np.dstack([rgb, ramp(rgb)])) if i % 2 else Image.fromarray(rgb))
    images = load_all(scene)
    assert {image.shape for image in images.values()} == {(32, 32, 4)}
    for i, path in enumerate(image_paths(scene)):
        np.testing.assert_array_equal(images[path.name][..., :3], rgbs[path.name])
        assert (images[path.name][..., 3] == (ramp(rgbs[path.name]) if i % 2 else 255)).all()


def test_image_that_fails_to_decode_is_named(scene: Path) -> None:
    path = image_paths(scene)[0]
    Image.open(path).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:-200])  # header intact: only decoding fails
    validate_scene(scene)
    dataset = PDSInputDataset(dataparser_outputs(scene))
    with pytest.raises(ValueError, match=f"image {path} cannot be read .*: replace it"):
        dataset.get_numpy_image(dataset.image_filenames.index(path))


# ------------------------------------------------------------------ PDSDataManager


@pytest.fixture
def large_scene(tmp_path: Path) -> Path:
    """3 views of 2000x2000 solid colours, and a stale images_2/ that nerfstudio would pick instead."""
    path = tmp_path / "large"
    make_scene(path, size=32, num_views=3)
    edit_transforms(path, enlarge)
    (path / "images_2").mkdir()
    for index, image in enumerate(image_paths(path)):
        Image.new("RGB", (2000, 2000), colour(index)).save(image, compress_level=1)
        Image.new("RGB", (1000, 1000), (0, 0, 0)).save(path / "images_2" / image.name)
    return path


def enlarge(meta: dict) -> None:
    """Intrinsics of 32x32 images made 2000x2000."""
    meta.update({key: meta[key] * 2000 / 32 for key in ("fl_x", "fl_y", "cx", "cy")}, w=2000, h=2000)


def colour(index: int) -> Tuple[int, int, int]:
    """Solid colour of view `index` of the large scene."""
    return (40 * index + 10, 200 - 30 * index, 90)


def test_large_images_are_downscaled_in_memory_only(large_scene: Path) -> None:
    before = folder_snapshot(large_scene)
    validate_scene(large_scene)
    config = PDSDataManagerConfig(dataparser=NerfstudioDataParserConfig(data=large_scene))
    manager: PDSDataManager = config.setup(device="cpu", test_mode="val")
    assert folder_snapshot(large_scene) == before
    assert manager.image_batch["image"].shape == (3, 1024, 1024, 3)
    cameras = manager.train_dataset.cameras
    assert (cameras.width == 1024).all() and (cameras.height == 1024).all()
    torch.testing.assert_close(cameras.fx, manager.train_dataparser_outputs.cameras.fx * 1024.5 / 2000)
    for index in range(manager.num_train_images):  # the originals, not the stale images_2/
        expected = torch.tensor(colour(index), dtype=torch.float32) / 255
        torch.testing.assert_close(manager.original_image(index), expected.expand(1024, 1024, 3))
    manager.replace_image(1, torch.zeros(1024, 1024, 3))
    assert manager.current_image(1).abs().sum() == 0
    torch.testing.assert_close(manager.original_image(1), torch.tensor(colour(1)) / 255 * torch.ones(1024, 1024, 3))


def test_camera_res_scale_factor_below_the_limit_is_kept(large_scene: Path) -> None:
    config = PDSDataManagerConfig(dataparser=NerfstudioDataParserConfig(data=large_scene), camera_res_scale_factor=0.25)
    manager = config.setup(device="cpu", test_mode="val")
    assert manager.image_batch["image"].shape == (3, 500, 500, 3)


def test_max_image_size_below_the_minimum_is_refused(scene: Path) -> None:
    config = PDSDataManagerConfig(dataparser=NerfstudioDataParserConfig(data=scene), max_image_size=8)
    with pytest.raises(ValueError, match="max-image-size must be at least 16"):
        config.setup(device="cpu", test_mode="val")


def test_in_memory_scale_keeps_images_and_cameras_the_same_size() -> None:
    # 1650x1100 and 625x150 are sizes where (limit + 0.5) / long alone makes cameras a pixel larger than images.
    sweep = [(long, short, 1024) for long in range(1025, 4000, 131) for short in range(16, long, 97)]
    cases = [(1650, 1100, 1024), (625, 150, 512), *sweep]
    for long, short, limit in cases:
        sides = torch.tensor([[long], [short]])
        factor = in_memory_scale(sides, 1.0, limit)
        cameras = Cameras(fx=1.0, fy=1.0, cx=1.0, cy=1.0, width=long, height=short, camera_to_worlds=torch.eye(4)[:3])
        cameras.rescale_output_resolution(factor)
        image_size = (int(long * factor), int(short * factor))  # InputDataset.get_numpy_image's resize
        assert (int(cameras.width), int(cameras.height)) == image_size
        assert image_size[0] == limit
    assert in_memory_scale(torch.tensor([[800], [600]]), 1.0, 1024) == 1.0
    assert in_memory_scale(torch.tensor([[4000]]), 0.5, None) == 0.5


# ------------------------------------------------------------------ ns-train pds


def test_ns_train_pds_on_a_missing_folder_fails_in_one_line(tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).parent / "ns-train"),
        "pds",
        "--data",
        str(tmp_path / "no_such_scene"),
        "--pipeline.source-prompt",
        "a",
        "--pipeline.target-prompt",
        "b",
    ]
    result = waiting.run(command, {**os.environ, "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: scene folder {tmp_path / 'no_such_scene'} does not exist: set --data to a nerfstudio scene folder"
    )
    assert not (tmp_path / "outputs").exists()
