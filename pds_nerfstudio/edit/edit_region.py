"""One edit region for every view: per-view masks fused in 3D with the source scene's depth (plain torch).

Each training view's mask (DiffEdit's, :mod:`pds_nerfstudio.guidance.edit_mask`) says where the prior thinks the
prompts disagree in that view alone; views disagree at the edges and some miss parts of the object. Fusing them:

1. every pixel of every view is back-projected to its surface point, `origin + depth * direction`, with the
   source reconstruction's depth;
2. a voxel grid around the masked points (the box of those within Tukey's fences on every axis, so that the
   far points of a mask's edge that spills onto the sky or the distance do not size it; grown by `margin` of its
   size on each side) takes, in each voxel, the mean of the masks of the pixels whose points fall in it: a voxel is in the
   region when most views that see it say so (> 0.5);
3. the region is dilated by `dilation` voxels and then by a ball of `grow` times the masked points' size (so
   that a shape may grow into the space around the object: a sphere's box holds a cube of its size only when
   grown by 0.21 of its diameter, at the cube's corners), and softened by a box filter of `softness` voxels;
4. any view's region, training view or not, is the most of the grid's values along each pixel's ray, up to one
   voxel behind the surface it sees (trilinear; 0 outside the grid): so the same 3D region is seen from every
   camera, an object in front of the region hides it, and the pixels whose rays pass through the region's grown
   space on their way to the ground behind the object are in it too (there a grown shape will be drawn). The
   region is a shell around the masked surfaces (the masks' pixels vote at their surface points), which every
   ray into the object crosses where it meets the surface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


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

    def along_rays(
        self,
        origins: Float[Tensor, "*batch 3"],
        directions: Float[Tensor, "*batch 3"],
        ray_depth: Float[Tensor, "*batch"],
        chunk: int = 16384,
    ) -> Float[Tensor, "*batch"]:
        """The most of the region along each (unit) ray from where it enters the grid's box to one voxel behind its
        surface at `ray_depth`, sampled every voxel and at the surface point itself."""
        shape = ray_depth.shape
        origins, directions = origins.reshape(-1, 3).float(), directions.reshape(-1, 3).float()
        ray_depth = ray_depth.reshape(-1).float()
        lower, upper = self.lower.to(origins), self.upper.to(origins)
        voxel = float(((upper - lower) / self.values.shape[0]).max())
        steps = int(math.ceil(float((upper - lower).norm()) / voxel)) + 1
        out = torch.empty_like(ray_depth)
        for start in range(0, len(ray_depth), chunk):
            o, d, depth = origins[start : start + chunk], directions[start : start + chunk], ray_depth[start : start + chunk]
            inverse = 1 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
            near_far = torch.stack([(lower - o) * inverse, (upper - o) * inverse])  # the box's slabs
            enter = near_far.min(0).values.max(-1).values.clamp_min(0)
            leave = torch.minimum(near_far.max(0).values.min(-1).values, depth + voxel)
            t = enter[:, None] + voxel * torch.arange(steps, dtype=o.dtype)[None]
            values = self.lookup(o[:, None] + t[..., None] * d[:, None]) * (t <= leave[:, None])
            at_surface = self.lookup(o + depth[:, None] * d)
            out[start : start + chunk] = torch.maximum(values.max(-1).values, at_surface)
        return out.reshape(shape)

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


def fuse(
    points: Float[Tensor, "views height width 3"],
    masks: Float[Tensor, "views height width"],
    resolution: int = 64,
    margin: float = 0.25,
    dilation: int = 2,
    softness: int = 1,
    valid: Bool[Tensor, "views height width"] | None = None,
    grow: float = 0.0,
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
    low, high = inlier_box(points[inside])
    size = (high - low).max().clamp_min(1e-6)  # a cube, so that voxels are cubes
    centre = (low + high) / 2
    margin = max(margin, grow + 2 * (dilation + softness + 1) / resolution)  # room for the growth inside the grid
    lower, upper = centre - size * (0.5 + margin), centre + size * (0.5 + margin)
    cell = ((points - lower) / (upper - lower) * resolution).floor().long()
    in_grid = ((cell >= 0) & (cell < resolution)).all(-1)
    index = (cell[in_grid] * torch.tensor([resolution * resolution, resolution, 1])).sum(-1)
    total = torch.zeros(resolution**3).index_add_(0, index, masks[in_grid])
    count = torch.zeros(resolution**3).index_add_(0, index, torch.ones_like(masks[in_grid]))
    vote = (total / count.clamp_min(1)).reshape(resolution, resolution, resolution)
    region = (vote > 0.5).float()[None, None]
    if dilation > 0:
        region = F.max_pool3d(region, 2 * dilation + 1, stride=1, padding=dilation)
    if grow > 0:
        region = dilate_by_ball(region, grow * resolution / (1 + 2 * margin))
    if softness > 0:
        region = F.avg_pool3d(region, 2 * softness + 1, stride=1, padding=softness, count_include_pad=False)
    return RegionGrid(lower, upper, region[0, 0])


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
    size = 2 * reach.max()
    margin = 2 * (softness + 1) / resolution
    lower, upper = centre - size * (0.5 + margin), centre + size * (0.5 + margin)
    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) / resolution
    cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)  # [x, y, z] voxel centres in [0, 1]
    local = (lower + cells * (upper - lower) - centre) @ rotation  # R^T (p - T), row-wise
    region = (local.abs() < scale / 2).all(-1).float()[None, None]
    if softness > 0:
        region = F.avg_pool3d(region, 2 * softness + 1, stride=1, padding=softness, count_include_pad=False)
    return RegionGrid(lower, upper, region[0, 0])


def dilate_by_ball(region: Float[Tensor, "1 1 d h w"], radius: float) -> Float[Tensor, "1 1 d h w"]:
    """Binary `region` grown by every voxel within `radius` voxels (Euclidean) of it."""
    reach = int(math.floor(radius))
    if reach < 1:
        return region
    offsets = torch.arange(-reach, reach + 1, dtype=torch.float32)
    ball = (offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2) <= radius**2
    touched = F.conv3d(region, ball.float()[None, None], padding=reach)
    return (touched > 0.5).float()


def inlier_box(points: Float[Tensor, "n 3"]) -> tuple[Float[Tensor, "3"], Float[Tensor, "3"]]:
    """The bounding box of the points within Tukey's fences (1.5 interquartile ranges beyond the quartiles) on
    every axis."""
    q1, q3 = torch.quantile(points, 0.25, dim=0), torch.quantile(points, 0.75, dim=0)
    spread = 1.5 * (q3 - q1)
    kept = points[((points >= q1 - spread) & (points <= q3 + spread)).all(-1)]
    return kept.min(0).values, kept.max(0).values
