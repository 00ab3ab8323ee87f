"""One chain of the fidelity matrix (an edit of one scene and seed: a reconstruction and one run per method), where
its files lie, and the matrix's constants."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METHODS = ("pds", "sds", "dds")
STAGES = ("pds", "refinement")
"""The measured results: the end of stage 1 and the end of stage 2."""
COLOUR_MATRIX = (
    "red sphere:blue sphere",
    "green cube:purple cube",
    "blue cylinder:orange cylinder",
    "yellow sphere:green sphere",
    "white cube:red cube",
    "orange cylinder:black cylinder",
    "purple sphere:white sphere",
    "cyan cube:gray cube",
)
"""Colour edits: chromatic and achromatic sources and targets, on spheres, cubes and cylinders."""
SHAPE_MATRIX = (
    "red sphere:red cube",
    "blue cube:blue cylinder",
    "green cylinder:green sphere",
)
"""Shape edits: the same object (place, size, yaw, colour) as another shape; the scene generator renders the answer."""
QUICK_MATRIX = ("red sphere:blue sphere", "cyan cube:gray cube")
SUCCESS = 0.9
"""Attribute success that counts as edited (iterations-to-edit; the goal)."""
EDIT_WINDOW_VIEWS = 5
"""Iterations-to-edit reads the renders of the last this many stage-1 views."""
SAMPLE_VIEWS = 8
"""Views of each scene into which the prior samples the target caption."""


@dataclass(frozen=True)
class Chain:
    """One edit of one scene (layout and runs seeded by `seed`): a reconstruction and one run per method."""

    source: str
    target: str
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.source.replace(' ', '-')}_to_{changed_word(self.source, self.target)}"

    @property
    def is_shape_edit(self) -> bool:
        return is_shape_edit(self.source, self.target)

    @property
    def scene(self) -> Path:
        return self.root / "scene"

    @property
    def target_scene(self) -> Path:
        """A shape edit's answer: the scene rendered with the target shape in the source's place (its truth)."""
        return self.root / "target_scene"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def reconstruction(self, kind: str = "nerfacto") -> Path:
        return self.runs / "scene" / KINDS[kind]["reconstruction"] / "source"

    def run(self, label: str) -> Path:
        kind, method = run_kind(label)
        variant = run_variant(label)
        return self.runs / "scene" / KINDS[kind]["edit"] / (method if variant is None else f"{method}+{variant}")


KINDS = {
    "nerfacto": {"reconstruction": "pds-nerfacto", "edit": "pds", "suffix": ""},
    "splat": {"reconstruction": "pds-splatfacto", "edit": "pds-splat", "suffix": "-splat"},
}
"""The scene representations: their reconstruction and edit methods, and the suffix of their runs' labels."""


def is_shape_edit(source: str, target: str) -> bool:
    """Whether "<colour> <shape>" `target` is another shape than `source` (else another colour)."""
    return source.split()[1] != target.split()[1]


def changed_word(source: str, target: str) -> str:
    """What an edit changes: the target's colour ("blue" for red sphere -> blue sphere) or its shape ("cube")."""
    return target.split()[1 if is_shape_edit(source, target) else 0]


def run_kind(label: str) -> tuple[str, str]:
    """(scene kind, method) of a run label: "pds" is PDS on nerfacto, "pds-splat" PDS on splats; a variant's label
    ("pds+region", "pds-splat+fast") is its method's with the variant's options added."""
    label = label.partition("+")[0]
    return ("splat", label[: -len("-splat")]) if label.endswith("-splat") else ("nerfacto", label)


def run_variant(label: str) -> str | None:
    """The variant of a run label ("region" of "pds-splat+region"); None for a method at the matrix's options."""
    return label.partition("+")[2] or None


def stage_ends(reconstruction: int, pds: int, refinement: int) -> dict[str, int]:
    """Global step of the last iteration of stages 1 and 2 (their checkpoints)."""
    return {"pds": reconstruction + pds - 1, "refinement": reconstruction + pds + refinement - 1}
