"""The edit region of a run (`--pipeline.edit-region auto`): estimated once, where stage 1 starts, from the source
scene and the prior; written with the run and read back by a resumed run, which must see the same region.

Each training image's DiffEdit map (:func:`pds_nerfstudio.guidance.edit_mask.diffedit_maps`, the source and target
prompts), or the user's own mask of it (`--pipeline.edit-region-masks`), is fused over the views in 3D with the
source scene's depth (:func:`pds_nerfstudio.edit.edit_region.fuse`), and the fused region is rendered back into
every training view. Written under the run directory:

- `edit_region/<image name>.png`: each training view's region (8-bit grey: 255 edits freely, 0 keeps the source);
- `edit_region/region.pt`: the 3D grid (any camera's region is its value at the camera's surface points, grown in
  the image by `--pipeline.edit-region-grow`);
- `renders/reconstruction/<image name>.png`: the source scene's render of each view, which stage 2 keeps outside
  the region;
- `edit_region/parts.pt` (splats): which of the source scene's Gaussians the edit trains, so that a resumed run holds
  the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from PIL import Image
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.utils.rich_utils import get_progress

from pds_nerfstudio.data.image_io import save_png
from pds_nerfstudio.edit import draws
from pds_nerfstudio.edit.edit_region import RegionGrid, fuse, grow_in_view, largest_along, surface_points
from pds_nerfstudio.edit.render_store import RenderStore
from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.guidance.edit_mask import DiffEditSettings, diffedit_maps
from pds_nerfstudio.guidance.resizing import to_prior_input
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior
from pds_nerfstudio.scenes.base import RayValue, SceneAdapter

REGION_FOLDER = "edit_region"
REGION_OUTPUT = "edit_region"
"""The name of the region among the renders' outputs (the viewer's output list, `ns-render --rendered-output-names`)."""


class EditRegionError(RuntimeError):
    """The prior finds nothing to edit; the message names the fix (the trainer prints it as one error line)."""


@dataclass
class EditRegion:
    """Every training view's region in [0, 1] (views in dataset order) and the source scene's renders of them."""

    views: Float[Tensor, "num_images height width"]
    source_renders: Float[Tensor, "num_images height width 3"]
    grid: Optional[RegionGrid] = None
    parts: Optional[Bool[Tensor, "num_parts"]] = None
    """Which of the scene's parts (splats' Gaussians) the edit trains, decided on the source scene (None: no part
    is held; `SceneAdapter.parts_in`)."""

    def composite(self, view: int, edited: Float[Tensor, "height width 3"]) -> Float[Tensor, "height width 3"]:
        """`edited` inside view `view`'s region, the source scene's render outside it (soft at the edge)."""
        weight = self.views[view].to(edited)[..., None]
        return weight * edited + (1 - weight) * self.source_renders[view].to(edited)

    def keep_loss(self, view: int, rgb: Float[Tensor, "height width 3"]) -> Float[Tensor, ""]:
        """Squared distance of a render of view `view` (any resolution) to the source scene's render outside the
        region, summed over channels and averaged over pixels: what anchors the scene outside the region while
        stage 1's guidance, weighted by the region, moves what is inside it."""
        size = tuple(rgb.shape[:2])
        outside = 1 - self.pixel_weight(view, size).to(rgb)
        source = self.source_renders[view].permute(2, 0, 1)[None].float()
        source = F.interpolate(source, size=size, mode="area")[0].permute(1, 2, 0).to(rgb)
        return (outside[..., None] * (rgb - source) ** 2).sum(-1).mean()

    def pixel_weight(self, view: int, size: tuple[int, int]) -> Float[Tensor, "height width"]:
        """View `view`'s region at `size` (a render's resolution; the area average when it is smaller)."""
        weight = self.views[view].float()
        if tuple(weight.shape) == size:
            return weight
        return F.interpolate(weight[None, None], size=size, mode="area")[0, 0]


MaskOf = Callable[[int, Float[Tensor, "height width 3"]], Float[Tensor, "height width"]]
"""A training view's own mask in [0, 1] (before fusion), from its index and its image."""


def diffedit_masks(prior: DiffusionPrior, prompts: tuple[str, str], seed: int,
                   settings: DiffEditSettings = DiffEditSettings()) -> MaskOf:  # fmt: skip
    """Each view's DiffEdit map between the source and target `prompts`, at the image's resolution."""
    cond = [prior.text_embeddings([prompt]) for prompt in prompts]

    def mask_of(view: int, image: Tensor) -> Tensor:
        height, width = image.shape[:2]
        generator = draws.generator(seed, draws.Stream.EDIT_REGION, view)
        with torch.no_grad():
            latents = prior.encode(to_prior_input(image.to(prior.device), prior.input_size(height, width)))
            maps = diffedit_maps(latents, prior.eps_fn(settings.guidance_scale), prior.alphas_cumprod, cond[0],
                                 cond[1], settings, generator, steps_offset=prior.ddim_settings["steps_offset"])  # fmt: skip
        return F.interpolate(maps[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]

    return mask_of


def folder_masks(folder: Path, image_filenames: Sequence[Path]) -> MaskOf:
    """Each view's mask from a user's folder: an image named as the training image (any extension), its
    brightness in [0, 1] (white edits, black keeps), resized to the image's resolution.

    Raises:
        EditRegionError: a training image has no mask in `folder` (all are checked first).
    """
    names = [Path(name).stem for name in image_filenames]
    found = {path.stem: path for path in sorted(folder.iterdir()) if path.suffix.lower() in (".png", ".jpg", ".jpeg")}
    missing = [name for name in names if name not in found]
    if missing:
        raise EditRegionError(f"{folder} has no mask for {len(missing)} of the {len(names)} training images "
                              f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): name each mask as "
                              "its training image, e.g. frame_00001.png")  # fmt: skip

    def mask_of(view: int, image: Tensor) -> Tensor:
        mask = Image.open(found[names[view]]).convert("L").resize((image.shape[1], image.shape[0]), Image.BILINEAR)
        return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255)

    return mask_of


def estimate_region(
    scene: SceneAdapter,
    cameras: Cameras,
    images: Callable[[int], Float[Tensor, "height width 3"]],
    num_views: int,
    mask_of: MaskOf,
    resolution: int,
    dilation: int,
    grow: float = 0.0,
) -> EditRegion:
    """The fused region of the training views `images(view)` seen by `cameras`, from each view's `mask_of`, with the
    source scene `scene` as it is now (call it before the edit changes it). Raises EmptyRegionError when no view's
    mask holds anything to edit."""
    masks, rays, renders = [], [], []
    with get_progress("Estimating the edit region (a mask of every training view, fused in 3D)") as progress:
        for view in progress.track(range(num_views)):
            masks.append(mask_of(view, images(view)[..., :3]).cpu())
            ray, render = surface_rays(scene, cameras, view)
            rays.append(ray)
            renders.append(render)
    points = torch.stack([surface_points(ray.origins, ray.directions, ray.depth) for ray in rays])
    grid = fuse(points, torch.stack(masks), resolution=resolution, dilation=dilation)
    return seen_region(grid, rays, renders, grow)


def region_in_views(scene: SceneAdapter, cameras: Cameras, num_views: int, grid: RegionGrid,
                    grow: float = 0.0) -> EditRegion:  # fmt: skip
    """A given 3D region (a user's box) as every training view of the source scene `scene` sees it."""
    rays, renders = zip(*(surface_rays(scene, cameras, view) for view in range(num_views)))
    return seen_region(grid, list(rays), list(renders), grow)


class Rays(NamedTuple):
    """A view's rays: origins, unit directions, the distance along each to the surface it sees, and the stretch of
    it that carries its render (:class:`pds_nerfstudio.scenes.base.SurfaceRender`)."""

    origins: Float[Tensor, "height width 3"]
    directions: Float[Tensor, "height width 3"]
    depth: Float[Tensor, "height width"]
    near: Float[Tensor, "height width"]
    far: Float[Tensor, "height width"]


def surface_rays(scene: SceneAdapter, cameras: Cameras, view: int) -> Tuple[Rays, Float[Tensor, "height width 3"]]:
    """View `view`'s rays up to the source scene's surface, and its render (on the CPU)."""
    surface = scene.render_surface(cameras, view)
    bundle = cameras.generate_rays(camera_indices=view, keep_shape=True)
    distances = (value.cpu().float() for value in (surface.depth, surface.near, surface.far))
    return Rays(bundle.origins.cpu(), bundle.directions.cpu(), *distances), surface.rgb.cpu()


def region_seen_along(grid: RegionGrid, grow: float) -> RayValue:
    """A view's region from its rays: the grid's largest value along the stretch of each that carries its render
    (:func:`pds_nerfstudio.edit.edit_region.largest_along`), grown in the image by `grow` of its width
    (:func:`pds_nerfstudio.edit.edit_region.grow_in_view`)."""

    def value(origins: Tensor, directions: Tensor, near: Tensor, far: Tensor) -> Tensor:
        return grow_in_view(largest_along(grid.lookup, origins, directions, near, far), grow)

    return value


def seen_region(grid: RegionGrid, rays: Sequence[Rays], renders: Sequence[Tensor], grow: float = 0.0) -> EditRegion:
    """Every view's region (:func:`region_seen_along`) and source render, quantised as the run's 8-bit PNGs hold
    them, so that a resumed run sees the same values."""
    seen = region_seen_along(grid, grow)
    views = torch.stack([seen(ray.origins, ray.directions, ray.near, ray.far) for ray in rays])
    return EditRegion(RenderStore.quantise(views), RenderStore.quantise(torch.stack(list(renders))), grid)


class RegionStore:
    """Writes and reads a run's edit region; the source renders go through the run's `renders` store, where it
    keeps stage 0's (`renders/reconstruction/`)."""

    def __init__(self, renders: RenderStore) -> None:
        self.image_names, self.source_renders = renders.image_names, renders

    def write(self, run_dir: Optional[Path], region: EditRegion) -> None:
        if run_dir is None:
            return
        for name, weight in zip(self.image_names, region.views):
            save_png(weight, run_dir / REGION_FOLDER / f"{name}.png")
        self.source_renders.write(run_dir, Stage.RECONSTRUCTION, region.source_renders)
        if region.grid is not None:
            torch.save(region.grid.state(), run_dir / REGION_FOLDER / "region.pt")
        if region.parts is not None:
            torch.save(region.parts, run_dir / REGION_FOLDER / "parts.pt")

    def read(self, run_dir: Optional[Path]) -> Optional[EditRegion]:
        """The region the run in `run_dir` wrote; None when any of its files is missing."""
        if run_dir is None:
            return None
        paths = [run_dir / REGION_FOLDER / f"{name}.png" for name in self.image_names]
        renders = self.source_renders.read(run_dir, Stage.RECONSTRUCTION)
        if renders is None or not all(path.is_file() for path in paths):
            return None
        views = [np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255 for path in paths]
        grid_path = run_dir / REGION_FOLDER / "region.pt"
        grid = RegionGrid.from_state(torch.load(grid_path, map_location="cpu")) if grid_path.is_file() else None
        parts_path = run_dir / REGION_FOLDER / "parts.pt"
        parts = torch.load(parts_path, map_location="cpu") if parts_path.is_file() else None
        return EditRegion(torch.from_numpy(np.stack(views)), renders, grid, parts)
