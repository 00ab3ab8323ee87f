"""The render store: what stage 2 and a resumed run read back is what the stage wrote, to the bit."""

from __future__ import annotations

from pathlib import Path

import torch

from pds_nerfstudio.edit.render_store import RenderStore
from pds_nerfstudio.edit.stages import Stage


def test_renders_read_back_as_they_were_quantised_and_missing_ones_read_as_none(tmp_path: Path) -> None:
    store = RenderStore([Path("images/frame_00001.png"), Path("images/frame_00002.jpg")])
    renders = store.quantise(torch.rand(2, 5, 7, 3) * 1.2 - 0.1)  # out of [0, 1] too: clamped
    assert renders.min() >= 0 and renders.max() <= 1
    assert torch.equal(store.quantise(renders), renders)
    store.write(tmp_path, Stage.PDS, renders)
    assert [p.name for p in store.paths(tmp_path, Stage.PDS)] == ["frame_00001.png", "frame_00002.png"]
    assert torch.equal(store.read(tmp_path, Stage.PDS), renders)
    assert store.read(tmp_path, Stage.REFINEMENT) is None and store.read(None, Stage.PDS) is None
    store.paths(tmp_path, Stage.PDS)[1].unlink()
    assert store.read(tmp_path, Stage.PDS) is None  # all or nothing
    store.write(None, Stage.PDS, renders)  # no run directory: nothing written, no error
