"""The fidelity measures on procedural scenes whose answer is known: each one reads the truth from real renders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pds_nerfstudio.measure import fidelity_measures as fm
from pds_nerfstudio.synthetic.procedural_scene import PALETTE, make_scene

COLOURS = ("red", "blue", "green", "yellow", "white", "black", "gray", "pink")


def _views(scene: Path) -> list[dict]:
    meta = json.loads((scene / "transforms.json").read_text())
    views = []
    for frame in meta["frames"]:
        name = Path(frame["file_path"]).stem
        pose = np.asarray(frame["transform_matrix"])
        origin, dirs = fm.pixel_rays(pose, meta["fl_x"], meta["cx"], meta["cy"], meta["w"], meta["h"])
        views.append({
            "image": np.asarray(Image.open(scene / "images" / f"{name}.png"), dtype=np.float64) / 255,
            "mask": np.asarray(Image.open(scene / "masks" / f"{name}.png")) > 0,
            "depth": fm.z_to_ray_depth(np.load(scene / "depth" / f"{name}.npy"), dirs, pose),
            "origin": origin,
            "dirs": dirs,
        })  # fmt: skip
    return views


@pytest.fixture(scope="module")
def recoloured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same layout (seed) of a cube, rendered in several colours: identical shading, only albedo differs."""
    root = tmp_path_factory.mktemp("recoloured")
    return {c: make_scene(root / c, size=48, num_views=6, objects=(f"{c} cube",), seed=3).out_dir for c in COLOURS}


def test_estimated_albedo_reads_every_colour_of_a_real_render(recoloured: dict[str, Path]) -> None:
    source = _views(recoloured["red"])
    for colour in COLOURS:
        for src, edited in zip(source, _views(recoloured[colour]), strict=True):
            estimate = fm.estimated_albedo(edited["image"], src["image"], PALETTE["red"], fm.erode(src["mask"]))
            assert estimate is not None
            assert fm.nearest_colour(estimate) == colour
            np.testing.assert_allclose(estimate, PALETTE[colour], atol=0.05)  # 8-bit quantisation, soft edges


def test_a_colour_reads_as_itself_brighter_or_darker_and_white_grey_black_apart() -> None:
    """Hue and chroma decide a chromatic colour: each palette colour reads as itself from 0.6 to 1.5 times its
    brightness (an edit may keep less of the shading than the answer has); white, grey and black, which differ only
    in lightness, read as themselves within a fifth of it. The old Euclidean rule read a brighter red as orange."""
    for name, rgb in PALETTE.items():
        scales = (0.8, 1.0, 1.2) if name in ("white", "gray") else (0.6, 0.8, 1.0, 1.25, 1.5)
        for scale in scales:
            assert fm.nearest_colour(np.asarray(rgb) * scale) == name, (name, scale)
    brighter_red = (1.26, 0.25, 0.23)  # white cube -> red, a training view after stage 2 (docs/fidelity.md)
    assert fm.nearest_colour(brighter_red) == "red" and fm.nearest_colour_rgb(brighter_red) == "orange"
    assert fm.cielab(np.ones(3))[0] == pytest.approx(100.0) and abs(fm.cielab(np.ones(3))[1:]).max() < 1e-3


def test_colour_distances_of_an_image_are_the_rule_pixel_by_pixel() -> None:
    """The array form (prior_colours labels every pixel with it) is the scalar rule, pixel by pixel."""
    pixels = np.random.default_rng(0).uniform(0, 1, (6, 7, 3))
    colours = np.asarray(list(PALETTE.values()))
    distances = fm.colour_distances(pixels, colours)
    assert distances.shape == (6, 7, len(PALETTE))
    for index in np.ndindex(6, 7):
        expected = [fm.colour_distance(pixels[index], c) for c in colours]
        np.testing.assert_allclose(distances[index], expected, rtol=1e-12)
        assert list(PALETTE)[int(distances[index].argmin())] == fm.nearest_colour(pixels[index])


def test_estimated_albedo_is_exact_for_a_lambertian_pixel_model() -> None:
    rng = np.random.default_rng(0)
    shading = rng.uniform(0.35, 1.0, (8, 8))
    source = shading[..., None] * np.asarray(PALETTE["orange"])
    edited = shading[..., None] * np.asarray(PALETTE["purple"])
    estimate = fm.estimated_albedo(edited, source, PALETTE["orange"], np.ones((8, 8), bool))
    np.testing.assert_allclose(estimate, PALETTE["purple"], rtol=1e-12)
    assert fm.estimated_albedo(edited, source, PALETTE["orange"], np.zeros((8, 8), bool)) is None


def _views_and_backgrounds(scene: Path) -> tuple[float, list[tuple[dict, np.ndarray]]]:
    """The scene's extent, and each view with its background distance (ground, or the objects' bounding sphere)."""
    info = json.loads((scene / "scene.json").read_text())
    obj = info["objects"][0]
    geometry = fm.SceneGeometry(info["extent"], np.asarray(obj["centre"]), obj["size"] * math.sqrt(3) * 1.05)
    return geometry.extent, [(v, fm.background_distance(v["origin"], v["dirs"], geometry)) for v in _views(scene)]


def test_silhouette_of_ground_truth_depth_matches_the_object_masks(recoloured: dict[str, Path]) -> None:
    extent, views = _views_and_backgrounds(recoloured["red"])
    for view, background in views:
        outline = fm.silhouette(view["depth"], background, extent)
        assert fm.iou(outline, view["mask"]) > 0.85  # only the contact with the ground is lost to the margin
        assert not outline[~np.isfinite(view["depth"])].any()  # sky is never object


def test_a_reconstructions_blended_ground_around_the_object_is_not_silhouette(recoloured: dict[str, Path]) -> None:
    """A reconstruction's depth around an object's base blends the object and the ground (splats' expected depth,
    NeRF haze), up to 8% of the extent in front of the ground: that skirt is ground, not object, so the true object's
    silhouette read from such a depth still matches the true one."""
    extent, views = _views_and_backgrounds(recoloured["red"])
    for view, background in views:
        near_object = ~view["mask"] & ~fm.erode(~view["mask"], 6) & np.isfinite(view["depth"])  # 6 pixels around it
        blended = np.where(near_object, view["depth"] - 0.08 * extent, view["depth"])
        truth = fm.silhouette(view["depth"], background, extent)
        assert fm.iou(fm.silhouette(blended, background, extent), truth) == 1.0
        assert not fm.silhouette(blended, background, extent)[near_object].any()


def test_psnr_iou_and_depth_error() -> None:
    a = np.zeros((4, 4, 3))
    b = a + 0.1
    everywhere = np.ones((4, 4), bool)
    assert fm.psnr(a, b, everywhere) == pytest.approx(20.0)
    assert fm.psnr(a, a, everywhere) == math.inf
    half = np.zeros((4, 4), bool)
    half[:2] = True
    assert fm.iou(half, everywhere) == 0.5 and fm.iou(~everywhere, ~everywhere) == 1.0
    assert fm.depth_error(np.full((4, 4), 2.0), np.full((4, 4), 1.5), half, extent=5.0) == pytest.approx((0.1, 1.0))
    transparent = np.full((4, 4), 1.5)
    transparent[0, 0] = 1000.0  # a pixel gone to the far plane moves the median by nothing
    assert fm.depth_error(transparent, np.full((4, 4), 1.5), everywhere, extent=5.0) == pytest.approx((0.0, 1 / 16))


def test_erode_drops_the_border() -> None:
    mask = np.zeros((5, 5), bool)
    mask[1:4, 1:4] = True
    eroded = fm.erode(mask)
    assert eroded.sum() == 1 and eroded[2, 2]


def test_clip_directional_similarity_with_a_tiny_random_clip(tiny_clip_dir: Path) -> None:
    rng = np.random.default_rng(0)
    source, edited = rng.uniform(size=(2, 3, 32, 32, 3))
    forward = fm.clip_directional_similarity(tiny_clip_dir, source, edited, "a red sphere", "a blue sphere")
    backward = fm.clip_directional_similarity(tiny_clip_dir, edited, source, "a red sphere", "a blue sphere")
    swapped = fm.clip_directional_similarity(tiny_clip_dir, source, edited, "a blue sphere", "a red sphere")
    assert -1 <= forward <= 1 and forward != 0
    assert backward == pytest.approx(-forward, abs=1e-5) and swapped == pytest.approx(-forward, abs=1e-5)
    assert fm.clip_directional_similarity(tiny_clip_dir, source, source, "a red sphere", "a blue sphere") == 0


@pytest.fixture(scope="module")
def reshaped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, fm.SceneTruth]:
    """A shape edit's source and its answer: the same layout (seed) as a red sphere and as a red cube."""
    root = tmp_path_factory.mktemp("reshaped")
    return {shape: fm.load_scene_truth(make_scene(root / shape, size=48, num_views=6, objects=(f"red {shape}",),
                                                  seed=3).out_dir) for shape in ("sphere", "cube")}  # fmt: skip


def test_a_shape_edits_answer_is_the_same_object_in_another_shape(reshaped: dict[str, fm.SceneTruth]) -> None:
    source, target = reshaped["sphere"], reshaped["cube"]
    assert (source.colour, source.shape, target.colour, target.shape) == ("red", "sphere", "red", "cube")
    for a, b in zip(source.views, target.views, strict=True):
        np.testing.assert_array_equal(a.origin, b.origin)  # the same cameras
        assert 0.3 < fm.iou(a.mask, b.mask) < 0.9  # one place, another outline
        assert fm.target_shape_fraction(b.image, a.image, b.image) == 1.0
        assert fm.target_shape_fraction(a.image, a.image, b.image) == 0.0
        assert fm.target_shape_fraction(a.image, a.image, a.image) is None  # no shape edit: nothing differs


def test_shape_edit_measures_read_the_answer_as_the_target_and_the_source_as_not(
    reshaped: dict[str, fm.SceneTruth],
) -> None:
    from pds_nerfstudio.measure.fidelity_runs import summarise, view_measures

    source, target = reshaped["sphere"], reshaped["cube"]
    names = [v.name for v in source.views]

    def renders(truth: fm.SceneTruth) -> tuple[np.ndarray, np.ndarray]:
        return np.stack([v.image for v in truth.views]), np.stack([v.depth for v in truth.views])

    def measured(truth: fm.SceneTruth) -> dict:  # the truth's images and depths as a run's renders
        per_view = view_measures(source, *renders(truth), renders(source), target)
        return summarise(per_view, names, names, "red", "red")

    edited, unchanged = measured(target), measured(source)
    assert edited["attribute_success"] == 1.0 and unchanged["attribute_success"] == 0.0  # reads as the target shape
    assert edited["target_shape_iou"] > 0.85 and edited["target_shape_iou"] > edited["source_shape_iou"] + 0.05
    assert unchanged["source_shape_iou"] > 0.85 and unchanged["source_shape_iou"] > unchanged["target_shape_iou"] + 0.05
    assert edited["source_colour_kept"] == 1.0 and unchanged["source_colour_kept"] == 1.0  # both red
    assert unchanged["background_psnr"] == math.inf  # outside both shapes: the source itself
    assert 20 < edited["background_psnr"] < math.inf  # the cube's shadow falls elsewhere than the sphere's
