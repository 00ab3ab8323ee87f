"""Stage 1's log panel: a view's source | render | guidance-gradient magnitude side by side, as tensorboard shows
it and ``run_dir/logs/step-<step>_<image name>.png`` holds it.

This module is the layout's one owner: whoever reads saved panels (the fidelity benchmark's iterations-to-edit)
reads them through :func:`read_panels`, never by slicing pixels itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from pds_nerfstudio.data.image_io import save_png

COLUMNS = ("source", "render", "gradient")
"""The panel's columns, left to right, each as wide as the render."""
TITLE = "PDS/" + " | ".join(COLUMNS)
"""The panel's tensorboard name."""
FOLDER = "logs"
"""The panels' folder under the run directory."""


def compose(
    source: Float[Tensor, "height width 3"], render: Float[Tensor, "height width 3"], gradient: Float[Tensor, "height width 3"]
) -> Float[Tensor, "height three_width 3"]:
    """The panel of one view: the three images side by side, in COLUMNS' order."""
    return torch.cat([source, render, gradient], dim=1)


def panel_path(run_dir: Path, step: int, image_name: str) -> Path:
    """Where the panel of stage-1 step `step` of the training image `image_name` (a file stem) is saved."""
    return run_dir / FOLDER / f"step-{step:09d}_{image_name}.png"


def save(panel: Float[Tensor, "height three_width 3"], run_dir: Path, step: int, image_name: str) -> None:
    save_png(panel, panel_path(run_dir, step, image_name))


@dataclass(frozen=True)
class SavedPanel:
    """A panel read back from a run: its step, the image it shows, and its columns as float arrays in [0, 1]."""

    step: int
    image_name: str
    source: Float[np.ndarray, "height width 3"]
    render: Float[np.ndarray, "height width 3"]
    gradient: Float[np.ndarray, "height width 3"]


def read_panels(run_dir: Path) -> List[SavedPanel]:
    """Every panel that the run in `run_dir` saved, by step."""
    panels = []
    for path in sorted((run_dir / FOLDER).glob("step-*_*.png")):
        step, image_name = path.stem.split("_", 1)
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
        width = pixels.shape[1] // len(COLUMNS)
        columns = [pixels[:, i * width : (i + 1) * width] for i in range(len(COLUMNS))]
        panels.append(SavedPanel(int(step.removeprefix("step-")), image_name, *columns))
    return sorted(panels, key=lambda panel: panel.step)
