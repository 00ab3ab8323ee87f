"""Measures of an edit of a procedural scene, whose right answer is known (plain numpy; no nerfstudio).

A procedural scene (:mod:`pds_nerfstudio.synthetic.procedural_scene`) is Lambertian: every object pixel is its
albedo times a grey shading factor, ``image = albedo * s``. The source view and the source albedo (``scene.json``)
give ``s`` per pixel, so an edited render divided by ``s`` estimates the edited albedo, whatever the light. The
nearest palette colour of that estimate is the view's colour. (Hue alone would do for chromatic colours, since
shading scales all three channels alike, but it cannot tell white, grey and black apart; dividing out the known
shading can.)

Identity is measured against the source reconstruction (the NeRF the edit started from), so that reconstruction
error is not counted against the edit:

- depth error: median |depth_edit - depth_source| over the (eroded) object mask, relative to the scene extent
  (the half-size of the ground square, also the cameras' distance to their target), and the fraction of those
  pixels that moved by more than 5% of the extent. Not over the ground: there nerfacto's own reconstruction
  of these scenes has no reliable depth (its median depth of the plain ground lies tens of extents away, at
  the far samples, against the true depth), so the ground's depth would measure noise, not the edit;
- background PSNR: over pixels outside the object mask;
- silhouette IoU: a pixel belongs to the object's silhouette when its depth is in front of the background (the
  ground, or the far side of the sphere around the objects) by more than 10% of the extent. The reference is the
  same rule applied to the ground-truth depth.
"""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Float

from pds_nerfstudio.synthetic.procedural_scene import PALETTE

SILHOUETTE_MARGIN = 0.1
"""Fraction of the scene extent by which a surface must be in front of the background to count as object. Not less:
a reconstruction's depth next to an object is a blend of the object and the ground (splatfacto's expected depth of
its semi-transparent Gaussians, nerfacto's median depth through its haze), which lies 2-11% of the extent in front of
the ground around the object's base; at 0.02 that skirt counted as object, and the source reconstructions' own
silhouettes met the true ones at IoU 0.51 (splats) and 0.85 (NeRF), which no edit could exceed (measured 2026-12-07,
docs/fidelity.md). At 0.1 they meet them at 0.94 and 0.96, and the true silhouettes keep 99.6% of a sphere's mask
pixels and 90% of a cube's (the sliver where its sides meet the ground)."""
DEPTH_OUTLIER = 0.05
"""A pixel whose depth moved by more than this fraction of the scene extent counts as a depth outlier."""
MIN_OBJECT_PIXELS = 12
"""A view whose (eroded) object mask is smaller than this is left out of attribute success."""


@dataclass(frozen=True)
class SceneGeometry:
    """What the measures need from ``scene.json`` and ``transforms.json`` (world units)."""

    extent: float
    """Half-size of the ground square; the cameras' distance to their target."""
    content_centre: np.ndarray
    """Centre of the sphere that holds every object."""
    content_radius: float


LIGHTNESS_WEIGHT = 0.5
"""Weight of lightness against chroma and hue in the colour distance (CMC l:c = 2:1, the "acceptability" weighting)."""


def cielab(rgb: Float[np.ndarray, "... 3"]) -> Float[np.ndarray, "... 3"]:
    """CIE L*a*b* (D65 white) of linear RGB; values above 1 (an albedo estimate brighter than white) go on."""
    xyz = np.asarray(rgb, dtype=np.float64) @ _RGB_TO_XYZ.T / _RGB_TO_XYZ.sum(1)
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_RGB_TO_XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
"""Linear sRGB to CIE XYZ (IEC 61966-2-1)."""


def colour_distance(rgb: Float[np.ndarray, "3"], other: Float[np.ndarray, "3"]) -> float:
    """CIELAB distance with lightness at LIGHTNESS_WEIGHT: sqrt((w dL)^2 + dC^2 + dH^2), dH the hue difference
    at the two chromas (CIE94's decomposition without its chroma scaling)."""
    return float(colour_distances(np.asarray(rgb), np.asarray(other)[None])[0])


def colour_distances(rgb: Float[np.ndarray, "*shape 3"], colours: Float[np.ndarray, "k 3"]) -> Float[np.ndarray, "*shape k"]:
    """:func:`colour_distance` from every colour of ``rgb`` (e.g. an image's pixels) to each of ``colours``."""
    lab, ref = cielab(rgb)[..., None, :], cielab(colours)
    c1, c2 = np.hypot(lab[..., 1], lab[..., 2]), np.hypot(ref[:, 1], ref[:, 2])
    hue = 2 * np.sqrt(c1 * c2) * np.sin((np.arctan2(lab[..., 2], lab[..., 1]) - np.arctan2(ref[:, 2], ref[:, 1])) / 2)
    return np.sqrt((LIGHTNESS_WEIGHT * (lab[..., 0] - ref[:, 0])) ** 2 + (c1 - c2) ** 2 + hue**2)


def nearest_colour(rgb: Float[np.ndarray, "3"], colours: dict[str, tuple[float, float, float]] = PALETTE) -> str:
    """The palette colour nearest to ``rgb`` by :func:`colour_distance`: hue and chroma decide between chromatic
    colours, lightness (at half weight) between white, grey and black. A red whose estimate is a quarter brighter
    than the palette's red stays red (a Euclidean distance in RGB called such a red orange: docs/fidelity.md)."""
    names = list(colours)
    return names[int(colour_distances(np.asarray(rgb), np.asarray([colours[n] for n in names])).argmin())]


def nearest_colour_rgb(rgb: Float[np.ndarray, "3"], colours: dict[str, tuple[float, float, float]] = PALETTE) -> str:
    """The palette colour nearest to ``rgb`` in Euclidean RGB: the fidelity matrix's rule before 2026-12-06, and the
    SVG matrix's, whose flat fills carry no shading (a fill is compared with the palette in the palette's own space)."""
    names = list(colours)
    distances = np.linalg.norm(np.asarray([colours[n] for n in names]) - np.asarray(rgb)[None], axis=1)
    return names[int(distances.argmin())]


def erode(mask: Bool[np.ndarray, "h w"], pixels: int = 1) -> Bool[np.ndarray, "h w"]:
    """Binary erosion by a 3x3 square, ``pixels`` times (drops the edge pixels where colours blend)."""
    out = mask.copy()
    for _ in range(pixels):
        padded = np.pad(out, 1, constant_values=False)
        out = np.logical_and.reduce(
            [padded[1 + dy : 1 + dy + mask.shape[0], 1 + dx : 1 + dx + mask.shape[1]]
             for dy in (-1, 0, 1) for dx in (-1, 0, 1)]  # fmt: skip
        )
    return out


def estimated_albedo(
    edited: Float[np.ndarray, "h w 3"],
    source: Float[np.ndarray, "h w 3"],
    source_albedo: tuple[float, float, float],
    mask: Bool[np.ndarray, "h w"],
) -> Float[np.ndarray, "3"] | None:
    """Median over ``mask`` of ``edited / s``, where ``s`` is the source view's shading (least squares per pixel).

    Returns None when fewer than :data:`MIN_OBJECT_PIXELS` pixels have usable shading.
    """
    albedo = np.asarray(source_albedo, dtype=np.float64)
    shading = source[mask] @ albedo / float(albedo @ albedo)
    usable = shading > 0.05
    if usable.sum() < MIN_OBJECT_PIXELS:
        return None
    return np.median(edited[mask][usable] / shading[usable, None], axis=0)


def psnr(a: Float[np.ndarray, "... 3"], b: Float[np.ndarray, "... 3"], mask: Bool[np.ndarray, "..."]) -> float:
    """PSNR in dB of images in [0, 1] over the pixels of ``mask`` (inf when identical)."""
    mse = float(np.mean((a[mask] - b[mask]) ** 2)) if mask.any() else 0.0
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def iou(a: Bool[np.ndarray, "h w"], b: Bool[np.ndarray, "h w"]) -> float:
    """Intersection over union (1 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def pixel_rays(
    camera_to_world: Float[np.ndarray, "4 4"], focal: float, cx: float, cy: float, width: int, height: int
) -> tuple[Float[np.ndarray, "3"], Float[np.ndarray, "h w 3"]]:
    """Origin and unit directions through the pixel centres of an OpenGL camera (nerfstudio's convention)."""
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    local = np.stack([(u - cx) / focal, -(v - cy) / focal, -np.ones_like(u)], axis=-1)
    dirs = local @ camera_to_world[:3, :3].T
    return camera_to_world[:3, 3], dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def background_distance(
    origin: Float[np.ndarray, "3"], dirs: Float[np.ndarray, "h w 3"], geometry: SceneGeometry
) -> Float[np.ndarray, "h w"]:
    """Ray distance beyond which a surface is background: the ground plane z = 0 inside its square, or the far
    side of the objects' sphere, whichever is nearer; 0 (never object) where the ray misses that sphere."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ground = -origin[2] / dirs[..., 2]
    hit = origin[None, None, :2] + np.nan_to_num(ground, posinf=0.0, neginf=0.0)[..., None] * dirs[..., :2]
    inside = (np.abs(hit) <= geometry.extent).all(-1) & (dirs[..., 2] < 0) & (ground > 0)
    ground = np.where(inside, ground, np.inf)
    offset = origin - geometry.content_centre
    b = dirs @ offset
    disc = b**2 - (offset @ offset - geometry.content_radius**2)
    far = -b + np.sqrt(np.clip(disc, 0.0, None))
    return np.where(disc > 0, np.minimum(ground, far), 0.0)


def silhouette(
    ray_depth: Float[np.ndarray, "h w"], background: Float[np.ndarray, "h w"], extent: float
) -> Bool[np.ndarray, "h w"]:
    """Pixels whose surface is in front of the background by more than ``SILHOUETTE_MARGIN * extent``."""
    return ray_depth < background - SILHOUETTE_MARGIN * extent


def depth_error(
    a: Float[np.ndarray, "h w"], b: Float[np.ndarray, "h w"], valid: Bool[np.ndarray, "h w"], extent: float
) -> tuple[float, float]:
    """Median |a - b| over ``valid`` pixels as a fraction of ``extent``, and the fraction of those pixels that
    moved by more than :data:`DEPTH_OUTLIER` of the extent.

    The median, because a NeRF pixel that turns transparent takes the far plane's depth (nerfacto: 1000 scene
    units), and a few such pixels would decide a mean; the outlier fraction reports them instead.
    """
    if not valid.any():
        return 0.0, 0.0
    moved = np.abs(a[valid] - b[valid]) / extent
    return float(np.median(moved)), float(np.mean(moved > DEPTH_OUTLIER))


def z_to_ray_depth(z_depth: Float[np.ndarray, "h w"], dirs: Float[np.ndarray, "h w 3"],
                   camera_to_world: Float[np.ndarray, "4 4"]) -> Float[np.ndarray, "h w"]:  # fmt: skip
    """Distance along each unit ray of a z-depth (distance along the camera's viewing axis)."""
    forward = -camera_to_world[:3, 2]
    return z_depth / (dirs @ forward)


@dataclass(frozen=True)
class SceneView:
    """The truth of one view of a procedural scene: its image, object mask, ray depth and rays."""

    name: str
    image: Float[np.ndarray, "h w 3"]
    mask: Bool[np.ndarray, "h w"]
    depth: Float[np.ndarray, "h w"]
    origin: Float[np.ndarray, "3"]
    dirs: Float[np.ndarray, "h w 3"]


@dataclass(frozen=True)
class SceneTruth:
    """Every view of a procedural scene (in ``transforms.json`` order), its geometry and its one object."""

    views: tuple[SceneView, ...]
    geometry: SceneGeometry
    albedo: tuple[float, float, float]
    """The object's source albedo (linear RGB)."""
    colour: str
    shape: str

    def view(self, name: str) -> SceneView:
        """The view whose image file is ``name`` (with or without extension)."""
        stem = Path(name).stem
        return next(v for v in self.views if v.name == stem)


def load_scene_truth(scene: Path) -> SceneTruth:
    """Reads a scene written by ``make_scene`` (transforms.json, images, masks, depth, scene.json)."""
    import json

    from PIL import Image

    meta = json.loads((scene / "transforms.json").read_text())
    info = json.loads((scene / "scene.json").read_text())
    objects = info["objects"]
    centre = np.mean([o["centre"] for o in objects], axis=0)
    radius = max(np.linalg.norm(np.asarray(o["centre"]) - centre) + o["size"] * math.sqrt(3) for o in objects) * 1.05
    geometry = SceneGeometry(extent=float(info["extent"]), content_centre=centre, content_radius=float(radius))
    views = []
    for frame in meta["frames"]:
        name = Path(frame["file_path"]).stem
        pose = np.asarray(frame["transform_matrix"])
        origin, dirs = pixel_rays(pose, meta["fl_x"], meta["cx"], meta["cy"], meta["w"], meta["h"])
        depth = z_to_ray_depth(np.load(scene / "depth" / f"{name}.npy"), dirs, pose)
        image = np.asarray(Image.open(scene / "images" / f"{name}.png").convert("RGB"), dtype=np.float64) / 255
        mask = np.asarray(Image.open(scene / "masks" / f"{name}.png")) > 0
        views.append(SceneView(name, image, mask, depth, origin, dirs))
    obj = objects[0]
    return SceneTruth(tuple(views), geometry, tuple(obj["rgb"]), obj["colour"], obj["shape"])


def read_colour(image: Float[np.ndarray, "h w 3"], view: SceneView, albedo: tuple[float, float, float]) -> str:
    """The palette colour that the object of ``image`` (a render of ``view``) reads as; "" where it is hidden."""
    estimate = estimated_albedo(image, view.image, albedo, erode(view.mask))
    return "" if estimate is None else nearest_colour(estimate)


SHAPE_MARGIN = 0.1
"""Two truths differ at a pixel where a channel differs by more than this (images in [0, 1])."""


def target_shape_fraction(
    image: Float[np.ndarray, "h w 3"], source: Float[np.ndarray, "h w 3"], target: Float[np.ndarray, "h w 3"]
) -> float | None:
    """Of the pixels where the source scene's and the target scene's true images differ (a shape edit: where one
    shape, or its shadow, covers what the other does not), the fraction where ``image`` is nearer the target's.
    0.5 or more reads as the target shape. None where the truths differ in fewer than MIN_OBJECT_PIXELS pixels.

    Needs no depth, so it reads renders (stage 1's log panels) and the prior's own samples alike."""
    differ = np.abs(source - target).max(-1) > SHAPE_MARGIN
    if differ.sum() < MIN_OBJECT_PIXELS:
        return None
    to_target = np.abs(image[differ] - target[differ]).sum(-1)
    to_source = np.abs(image[differ] - source[differ]).sum(-1)
    return float(np.mean(to_target < to_source))


def fraction_reading(colours: list[str], colour: str) -> float:
    """Fraction of the views where the object is seen that read as ``colour`` (0 when none is seen)."""
    seen = [c for c in colours if c]
    return sum(c == colour for c in seen) / len(seen) if seen else 0.0


@dataclass(frozen=True)
class StageRenderMeasures:
    """How a stage's renders of the training views (a run's renders/<stage>/) read, against the scene's truth."""

    colours: tuple[str, ...]
    """The colour each view's object reads as ("" where it is hidden), in file-name order."""
    background_psnr: float
    """Mean over views of the PSNR outside the object mask against the reference renders (inf when identical)."""

    def reading(self, colour: str) -> tuple[int, int]:
        """(views whose object reads as ``colour``, views where the object is seen)."""
        seen = [c for c in self.colours if c]
        return sum(c == colour for c in seen), len(seen)


def measure_stage_renders(renders: Path, reference: Path, truth: SceneTruth) -> StageRenderMeasures:
    """Reads every PNG of the folder ``renders`` (named as the scene's images) as in :func:`read_colour`, and
    its background against the PNG of the same name in ``reference`` (e.g. renders/reconstruction/)."""
    from PIL import Image

    def load(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255

    paths = sorted(renders.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no renders in {renders}")
    colours, psnrs = [], []
    for path in paths:
        view, image = truth.view(path.name), load(path)
        colours.append(read_colour(image, view, truth.albedo))
        psnrs.append(psnr(image, load(reference / path.name), ~view.mask))
    finite = [value for value in psnrs if math.isfinite(value)]
    return StageRenderMeasures(tuple(colours), float(np.mean(finite)) if finite else math.inf)


def clip_directional_similarity(
    model_dir: str | Path,
    source_images: Float[np.ndarray, "views h w 3"],
    edited_images: Float[np.ndarray, "views h w 3"],
    source_prompt: str,
    target_prompt: str,
) -> float:
    """Mean over views of cos(E_img(edited) - E_img(source), E_txt(target) - E_txt(source)), with the CLIP model
    in ``model_dir`` (a transformers CLIPModel folder with its tokenizer and image processor)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = CLIPTokenizer.from_pretrained(model_dir)
    processor = CLIPImageProcessor.from_pretrained(model_dir)

    def image_features(images: np.ndarray) -> torch.Tensor:
        pixels = processor(images=list(np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)), return_tensors="pt")
        return _features(model.get_image_features(pixel_values=pixels.pixel_values))

    with torch.no_grad():
        tokens = tokenizer([source_prompt, target_prompt], padding=True, return_tensors="pt")
        text = _features(model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask))
        image_direction = image_features(edited_images) - image_features(source_images)
        text_direction = text[1] - text[0]
        cosine = torch.nn.functional.cosine_similarity(image_direction, text_direction[None], dim=-1)
    return float(cosine.mean())


def _features(output) -> "torch.Tensor":  # noqa: F821
    """Normalised embeddings; transformers >= 5 may return a model output instead of a tensor."""
    embeds = output if hasattr(output, "norm") else output.pooler_output
    return embeds / embeds.norm(dim=-1, keepdim=True)
