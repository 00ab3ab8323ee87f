"""What an edit changed in a drawing, shape by shape: colour distances and control-point displacements."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pds_nerfstudio.svg.scene import VectorScene

COLOUR_CHANGED = 0.05
"""RGB distance (channels in [0, 1]) above which a colour counts as changed in the summary."""


@dataclass(frozen=True)
class ShapeChange:
    """One shape's change."""

    index: int
    name: str
    """Its id, else its element name and position: `circle #2`."""
    fill_before: tuple[float, ...] | None
    fill_after: tuple[float, ...] | None
    fill_distance: float
    """Euclidean RGB distance of the fill, plus the change of its alpha (0 without a fill)."""
    stroke_distance: float
    displacement_mean: float
    """Mean displacement of its control points, canvas pixels."""
    displacement_max: float


def shape_name(scene: VectorScene, index: int) -> str:
    if scene.ids and scene.ids[index]:
        return scene.ids[index]  # type: ignore[return-value]
    tag = scene.tags[index] if scene.tags else "shape"
    return f"{tag} #{index + 1}"


def hex_colour(rgba: tuple[float, ...] | None) -> str:
    if rgba is None:
        return "none"
    text = "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02x}" for c in rgba[:3])
    return text if rgba[3] >= 0.999 else f"{text} at {rgba[3]:.2f}"


def _paint_distance(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after[:3] - before[:3]).norm() + (after[3] - before[3]).abs())


def shape_changes(source: VectorScene, edited: VectorScene) -> list[ShapeChange]:
    """Every shape's change from `source` to `edited` (the same drawing, edited)."""
    moved = (edited.points.detach() - source.points.detach()).norm(dim=-1)
    changes = []
    for k in range(source.num_shapes):
        segments = torch.isin(source.segment_contour, torch.nonzero(source.contour_shape == k).flatten())
        rows = torch.unique(source.segment_points[segments])
        fill = bool(source.has_fill[k])
        before = tuple(source.fill_colour[k].tolist()) if fill else None
        after = tuple(edited.fill_colour[k].detach().tolist()) if fill else None
        changes.append(ShapeChange(
            index=k,
            name=shape_name(source, k),
            fill_before=before,
            fill_after=after,
            fill_distance=_paint_distance(source.fill_colour[k], edited.fill_colour[k].detach()) if fill else 0.0,
            stroke_distance=_paint_distance(source.stroke_colour[k], edited.stroke_colour[k].detach())
            if bool(source.has_stroke[k]) else 0.0,
            displacement_mean=float(moved[rows].mean()) if rows.numel() else 0.0,
            displacement_max=float(moved[rows].max()) if rows.numel() else 0.0,
        ))  # fmt: skip
    return changes


def summary_lines(source: VectorScene, edited: VectorScene) -> list[str]:
    """A few lines for the console: which shapes changed colour (and to what), how far points moved."""
    changes = shape_changes(source, edited)
    canvas = max(source.width, source.height)
    recoloured = [c for c in changes if max(c.fill_distance, c.stroke_distance) > COLOUR_CHANGED]
    lines = [f"colours: {len(recoloured)} of {len(changes)} shapes changed by more than {COLOUR_CHANGED} (RGB distance)"]
    for change in recoloured[:12]:
        fill = f"fill {hex_colour(change.fill_before)} -> {hex_colour(change.fill_after)}" if change.fill_before else "stroke"
        lines.append(f"  {change.name}: {fill}")
    if len(recoloured) > 12:
        lines.append(f"  ... and {len(recoloured) - 12} more")
    moved = torch.tensor([c.displacement_max for c in changes])
    mean = torch.tensor([c.displacement_mean for c in changes])
    lines.append(f"points: moved {float(mean.mean()):.2f} px on average, {float(moved.max()):.2f} px at most "
                 f"({100 * float(moved.max()) / canvas:.1f}% of the canvas)")  # fmt: skip
    return lines
