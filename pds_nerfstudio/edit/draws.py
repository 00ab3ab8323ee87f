"""Every random draw of an edit, as a function of (seed, stream, index) only: a resumed run, or a rerun with the
same seed, redraws the same values at the same step, whatever happened before it.

Each kind of draw has its own named stream, so that adding one never shifts another. The seeds are
``seed * SEED_STRIDE + index * INDEX_STRIDE + stream``: different seeds share no generator below
SEED_STRIDE / INDEX_STRIDE (about 142,000) indices, past any stage length in use (the authors' longest is 30,000).
"""

from __future__ import annotations

import random
from enum import IntEnum

import torch

SEED_STRIDE = 1_000_003
"""A prime between seeds."""
INDEX_STRIDE = 7
"""Between indices (steps, cycles) of one seed: room for seven streams."""


class Stream(IntEnum):
    """The edit's kinds of draws (their values are part of every run's reproducibility: never renumber)."""

    GUIDANCE = 0
    """Stage 1, per step: the timesteps and noises of the guidance gradient."""
    SDEDIT = 1
    """Stage 2, per SDEdit step: its number of DDIM steps and its noise."""
    SDEDIT_ORDER = 2
    """Stage 2, per cycle over the training views: the order in which they are SDEdited."""
    EDIT_REGION = 3
    """Where stage 1 starts, per training view: the noises of its DiffEdit mask (`--pipeline.edit-region auto`)."""


def generator(seed: int, stream: Stream, index: int) -> torch.Generator:
    """A CPU torch generator for draw `index` (a step or a cycle) of `stream`."""
    return torch.Generator().manual_seed(seed * SEED_STRIDE + index * INDEX_STRIDE + int(stream))


def stage1_view(seed: int, block: int, num_views: int) -> int:
    """The training view of stage 1's `block`-th run of `change_view_every` steps, drawn uniformly."""
    return random.Random(seed * SEED_STRIDE + block).randrange(num_views)
