"""One edit region for every view: per-view masks fused in 3D with the source scene's depth (plain torch).

Each training view's mask (DiffEdit's, :mod:`pds_nerfstudio.guidance.edit_mask`) says where the prior thinks the
prompts disagree in that view alone; views disagree at the edges and some miss parts of the object. Fusing them:

1. every pixel of every view is back-projected to its surface point, `origin + depth * direction`, with the
   source reconstruction's depth;
2. a voxel grid around the masked points (the box of those within Tukey's fences on every axis, so that the
   far points of a mask's edge that spills onto the sky or the distance do not size it; grown by `margin` of its
   size on each side) takes, in each voxel, the mean of the masks of the pixels whose points fall in it: a voxel is
   in the region when most views that see it say so (> 0.5). Only its main connected parts are kept (stray voxels
   that a reconstruction's floaters or foggy depths vote in are not), and the vote is taken again on a grid around
   them, so that the object, not the spread of the depths, sets the grid's size;
3. the region is dilated by `dilation` voxels and softened by a box filter of `softness` voxels;
4. any view's region, training view or not, is the grid's largest value along the stretch of each pixel's ray that
   carries its render (:func:`largest_along`; trilinear, 0 outside the grid; a NeRF's surface is such a stretch, and
   its median depth can lie in a haze in front of the face the mask saw; a splat's is its surface point), so the same
   3D region is seen from every camera; its holes are filled (:func:`grow_in_view`:
   a face that most views' masks left out, enclosed by the object's outline). With `grow` > 0 each view's region
   then grows by a disc of `grow` times its own width: a shape edit draws outside the object it
   starts from (a sphere's region must grow by 0.21 of its width to hold a cube of its size), where the source
   scene's surface is the ground behind, which the 3D region does not hold. The growth is drawn in the image
   because it needs no depth of that ground: a reconstruction's depth of a plain ground can lie far behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


HELD_MARGIN = 1.5
"""Voxels by which the region a scene holds its source outside (:meth:`RegionGrid.grown`) reaches past the fused one.
A fused region is dilated and then softened by one voxel each, so the surface it was fused from lies on its soft edge
(about 2/3): a held NeRF there would blend a third of the source into the edited surface. One voxel more puts the
edge outside: measured on three toy scenes (2026-12-07), the objects' true surface at weight > 0.9 goes from 50-75%
of their pixels to 98%, at 0.6-2.6% more of the background."""


class EmptyRegionError(ValueError):
    """No pixel of any view's mask exceeds 0.5: there is nothing to edit."""


@dataclass(frozen=True)
class RegionGrid:
    """A soft 3D region in [0, 1] on a voxel grid over the box [lower, upper] (world units)."""

    lower: Float[Tensor, "3"]
    upper: Float[Tensor, "3"]
    values: Float[Tensor, "res res res"]
    """Indexed [x, y, z]."""

    def lookup(self, points: Float[Tensor, "*batch 3"]) -> Float[Tensor, "*batch"]:
        """The region's value at `points`, trilinear between voxel centres; 0 outside the box."""
        unit = (points - self.lower.to(points)) / (self.upper - self.lower).to(points)  # [0, 1] inside the box
        grid = (unit * 2 - 1).reshape(1, 1, 1, -1, 3)  # grid_sample's (x, y, z) indexes (W, H, D): [z, y, x] storage
        volume = self.values.permute(2, 1, 0)[None, None].to(points)
        sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return sampled.reshape(points.shape[:-1])

    def grown(self, fraction: float, margin: float = HELD_MARGIN) -> "RegionGrid":
        """The region grown in 3D by a ball of `fraction` times its width (the largest side of the box of its voxels
        above 0.5), and by at least `margin` voxels, on a grid padded to hold it (the same voxels), softened by one
        voxel outside. What a scene that keeps its source may change (:meth:`SceneAdapter.hold_source_outside`), as
        :func:`grow_in_view` lets a shape edit draw in each image."""
        inside = self.values > 0.5
        if not bool(inside.any()):
            return self
        cell = (self.upper - self.lower) / self.values.shape[0]
        cells = inside.nonzero()
        width = float(((cells.max(0).values - cells.min(0).values + 1) * cell).max())
        radius = max(fraction * width / float(cell.max()), margin)  # in voxels
        reach = int(math.ceil(radius))
        pad = reach + 2
        padded = F.pad(inside.float(), (pad,) * 6)
        grown = F.conv3d(padded[None, None], ball(radius, reach, 3)[None, None], padding=reach)[0, 0] > 0.5
        values = torch.maximum(F.pad(self.values, (pad,) * 6), soften(grown.float(), 1))
        return RegionGrid(self.lower - pad * cell, self.upper + pad * cell, values)

    def state(self) -> dict:
        return {"lower": self.lower.cpu(), "upper": self.upper.cpu(), "values": self.values.cpu()}

    @classmethod
    def from_state(cls, state: dict) -> "RegionGrid":
        return cls(state["lower"].float(), state["upper"].float(), state["values"].float())


def surface_points(
    origins: Float[Tensor, "*batch 3"], directions: Float[Tensor, "*batch 3"], ray_depth: Float[Tensor, "*batch"]
) -> Float[Tensor, "*batch 3"]:
    """Where each pixel's ray meets the surface: `origin + depth * direction` (unit directions, ray distance)."""
    return origins + ray_depth[..., None] * directions


STRETCH_POINTS = 16
"""Points at which :func:`largest_along` reads the region on each ray's stretch."""


def largest_along(
    region: Callable[[Float[Tensor, "*batch 3"]], Float[Tensor, "*batch"]],
    origins: Float[Tensor, "*rays 3"],
    directions: Float[Tensor, "*rays 3"],
    near: Float[Tensor, "*rays"],
    far: Float[Tensor, "*rays"],
    points: int = STRETCH_POINTS,
) -> Float[Tensor, "*rays"]:
    """The largest value of `region` over `points` points evenly spaced on each ray's stretch [near, far] (distances
    along unit `directions`): its value at the surface point where near = far."""
    if torch.equal(near, far):
        return region(surface_points(origins, directions, near))
    steps = torch.linspace(0, 1, points, device=near.device, dtype=near.dtype)
    distances = near[..., None] + (far - near)[..., None] * steps
    return region(origins[..., None, :] + distances[..., None] * directions[..., None, :]).max(-1).values


def fuse(
    points: Float[Tensor, "views height width 3"],
    masks: Float[Tensor, "views height width"],
    resolution: int = 64,
    margin: float = 0.25,
    dilation: int = 2,
    softness: int = 1,
    valid: Bool[Tensor, "views height width"] | None = None,
) -> RegionGrid:
    """The region that most views' `masks` (in [0, 1]) agree on, at their pixels' surface `points` (see the module).

    Raises:
        EmptyRegionError: no pixel's mask exceeds 0.5 (the prior found nothing to edit).
    """
    points, masks = points.reshape(-1, 3).float(), masks.reshape(-1).float()
    keep = torch.isfinite(points).all(-1) if valid is None else valid.reshape(-1) & torch.isfinite(points).all(-1)
    points, masks = points[keep], masks[keep]
    inside = masks > 0.5
    if not bool(inside.any()):
        raise EmptyRegionError("no pixel of any view is in the edit region: the prior finds nothing to edit")
    margin = max(margin, 2 * (dilation + softness + 1) / resolution)  # room for the dilation inside the grid
    lower, upper = cube_around(*inlier_box(points[inside]), margin)
    region = main_components(vote(points, masks, lower, upper, resolution) > 0.5)
    if bool(region.any()):  # again on a grid around the region found: a reconstruction's stray depths (a mask's
        cells = region.nonzero()  # pixels on floaters or on a far, foggy ground) sized the first grid, not the object
        cell = (upper - lower) / resolution
        lower, upper = cube_around(lower + cells.min(0).values * cell, lower + (cells.max(0).values + 1) * cell, margin)
        region = main_components(vote(points, masks, lower, upper, resolution) > 0.5)
    region = region.float()[None, None]
    if dilation > 0:
        region = F.max_pool3d(region, 2 * dilation + 1, stride=1, padding=dilation)
    return RegionGrid(lower, upper, soften(region[0, 0], softness))


def soften(region: Float[Tensor, "d h w"], softness: int) -> Float[Tensor, "d h w"]:
    """`region` averaged over a box of `softness` voxels on each side (a soft edge; the grid's border not padded)."""
    if softness <= 0:
        return region
    return F.avg_pool3d(region[None, None], 2 * softness + 1, stride=1, padding=softness, count_include_pad=False)[0, 0]


def cube_around(low: Float[Tensor, "3"], high: Float[Tensor, "3"], margin: float) -> tuple[Tensor, Tensor]:
    """The cube (so that voxels are cubes) centred on the box [low, high], its largest side grown by `margin` of it
    on each side."""
    size, centre = (high - low).max().clamp_min(1e-6), (low + high) / 2
    return centre - size * (0.5 + margin), centre + size * (0.5 + margin)


def vote(points: Float[Tensor, "n 3"], masks: Float[Tensor, "n"], lower: Tensor, upper: Tensor,
         resolution: int) -> Float[Tensor, "res res res"]:  # fmt: skip
    """The mean mask of the points in each voxel of the grid over [lower, upper] (0 where none falls)."""
    cell = ((points - lower) / (upper - lower) * resolution).floor().long()
    in_grid = ((cell >= 0) & (cell < resolution)).all(-1)
    index = (cell[in_grid] * torch.tensor([resolution * resolution, resolution, 1])).sum(-1)
    total = torch.zeros(resolution**3).index_add_(0, index, masks[in_grid])
    count = torch.zeros(resolution**3).index_add_(0, index, torch.ones_like(masks[in_grid]))
    return (total / count.clamp_min(1)).reshape(resolution, resolution, resolution)


MAIN_COMPONENT_SHARE = 0.1
"""A connected part of the voted region is kept when it has at least this share of the largest part's voxels."""


def main_components(region: Bool[Tensor, "d h w"]) -> Bool[Tensor, "d h w"]:
    """The connected parts (26-neighbours) of `region` with at least MAIN_COMPONENT_SHARE of the largest's voxels:
    the object, without the stray voxels that a few pixels' wrong depths vote in."""
    if not bool(region.any()):
        return region
    labels = torch.where(region, torch.arange(1, region.numel() + 1, dtype=torch.float32).reshape(region.shape), 0.0)
    while True:  # every voxel takes the largest label among its neighbours in the region, until none changes
        spread = F.max_pool3d(labels[None, None], 3, stride=1, padding=1)[0, 0] * region
        if torch.equal(spread, labels):
            break
        labels = spread
    sizes = torch.bincount(labels.long().reshape(-1))
    sizes[0] = 0
    return region & (sizes[labels.long()] >= MAIN_COMPONENT_SHARE * sizes.max())


def box_grid(
    rotation: Float[Tensor, "3 3"],
    centre: Float[Tensor, "3"],
    scale: Float[Tensor, "3"],
    resolution: int = 64,
    softness: int = 1,
) -> RegionGrid:
    """A user's oriented box (nerfstudio's OrientedBox: the points p with |R^T (p - T)| < S / 2 on every axis) as
    a region grid over the box's bounds, softened by `softness` voxels as a fused region is."""
    rotation, centre, scale = rotation.float(), centre.float(), scale.float()
    corners = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]) * scale
    reach = (corners @ rotation.T).abs().max(0).values  # half the box's extent along each world axis
    lower, upper = cube_around(centre - reach, centre + reach, margin=2 * (softness + 1) / resolution)
    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)  # [x, y, z] voxel centres in [0, 1]
    local = (lower + cells * (upper - lower) - centre) @ rotation  # R^T (p - T), row-wise
    return RegionGrid(lower, upper, soften((local.abs() < scale / 2).all(-1).float(), softness))


def grow_in_view(region: Float[Tensor, "height width"], grow: float) -> Float[Tensor, "height width"]:
    """A view's `region` (in [0, 1]) with its holes filled (pixels the region encloses: a lit face that some views'
    masks left out, inside the object's outline), then grown by a disc of radius `grow` times the region's width,
    its equivalent diameter 2 sqrt(area / pi) over the pixels above 0.5; the soft edge is kept outside."""
    filled = fill_holes(region > 0.5)
    radius = grow * 2 * math.sqrt(float(filled.sum()) / math.pi)
    reach = int(math.floor(radius))
    if reach >= 1:
        disc = ball(radius, reach, 2).to(region.device)
        filled = F.conv2d(filled.float()[None, None], disc[None, None], padding=reach)[0, 0] > 0.5
    return torch.maximum(region, filled.to(region))


def ball(radius: float, reach: int, dims: int) -> Float[Tensor, "..."]:
    """The cells within `radius` of the centre of a grid of 2 `reach` + 1 cells a side in `dims` dimensions (1 or 0):
    a disc (2) or a ball (3) to dilate by."""
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float32)
    squares = sum(offsets.reshape([-1 if axis == d else 1 for axis in range(dims)]) ** 2 for d in range(dims))
    return (squares <= radius**2).float()


def fill_holes(inside: Bool[Tensor, "height width"]) -> Bool[Tensor, "height width"]:
    """`inside` and every pixel that no 4-connected path of outside pixels joins to the image's border (what
    scipy.ndimage.binary_fill_holes does, in plain torch so that an edit needs no scipy; a test holds the two)."""
    outside = ~inside
    reached = torch.zeros_like(inside)
    reached[[0, -1], :], reached[:, [0, -1]] = outside[[0, -1], :], outside[:, [0, -1]]
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=inside.device)
    while True:  # the outside reached from the border grows by one 4-neighbour step until it stops
        grown = (F.conv2d(reached.float()[None, None], cross[None, None], padding=1)[0, 0] > 0) & outside
        if torch.equal(grown, reached):
            return ~reached
        reached = grown


def inlier_box(points: Float[Tensor, "n 3"]) -> tuple[Float[Tensor, "3"], Float[Tensor, "3"]]:
    """The bounding box of the points within Tukey's fences (1.5 interquartile ranges beyond the quartiles) on
    every axis."""
    q1, q3 = torch.quantile(points, 0.25, dim=0), torch.quantile(points, 0.75, dim=0)
    spread = 1.5 * (q3 - q1)
    kept = points[((points >= q1 - spread) & (points <= q3 + spread)).all(-1)]
    return kept.min(0).values, kept.max(0).values
