"""Measuring edits and their speed: the fidelity measures of a procedural scene's edit (fidelity_measures), the
fidelity matrix of PDS against SDS and DDS (fidelity_matrix, fidelity_chain, fidelity_runs, fidelity_report), the
speed benchmark (speed) and the real-size edit check (edit_check). `scripts/` holds their command lines."""

from pathlib import Path

from pds_nerfstudio.commands import REPO

FACE_SCENE: Path = REPO.parent / "shared" / "data" / "in2n_face"
"""The captured face scene of the development machines, where present (the benchmark's and edit check's default)."""
