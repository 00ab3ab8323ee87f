"""The renders of every training view at the end of a stage, kept as ``run_dir/renders/<stage>/<image name>.png``.

Stage 2 trains on stage 1's renders, so a resumed run must see exactly what the killed run saw: renders are
quantised to 8 bits in memory as the PNGs hold them, and read back from the earlier run's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from pds_nerfstudio.data.image_io import save_png
from pds_nerfstudio.edit.stages import Stage


class RenderStore:
    """Writes and reads one stage's renders of the training images `image_filenames` under a run directory."""

    def __init__(self, image_filenames: Sequence[Path]) -> None:
        self.image_names = [Path(name).stem for name in image_filenames]

    def paths(self, run_dir: Path, stage: Stage) -> List[Path]:
        return [run_dir / "renders" / stage.value / f"{name}.png" for name in self.image_names]

    @staticmethod
    def quantise(renders: Float[Tensor, "num_images height width 3"]) -> Float[Tensor, "num_images height width 3"]:
        """What the PNGs hold, so that a resumed run sees the same values."""
        return (renders.clamp(0, 1) * 255).round() / 255

    def write(self, run_dir: Optional[Path], stage: Stage, renders: Float[Tensor, "num_images height width 3"]) -> None:
        if run_dir is not None:
            for image, path in zip(renders, self.paths(run_dir, stage)):
                save_png(image, path)

    def read(self, run_dir: Optional[Path], stage: Stage) -> Optional[Float[Tensor, "num_images height width 3"]]:
        """The renders the run in `run_dir` wrote at the end of `stage`; None when any is missing."""
        if run_dir is None:
            return None
        paths = self.paths(run_dir, stage)
        if not all(path.is_file() for path in paths):
            return None
        arrays = [np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255 for path in paths]
        return torch.from_numpy(np.stack(arrays))
