"""The edit a user gets: one `ns-train pds` through every stage with the toy prior reaches the target colour
and keeps the scene (measured as `make demo` and scripts/fidelity.py measure it)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli

from pds_nerfstudio.measure.fidelity_measures import load_scene_truth, measure_stage_renders
from pds_nerfstudio.synthetic.procedural_scene import make_scene
from pds_nerfstudio.synthetic.small_nerfacto import CPU_NERFACTO_OPTIONS, NO_EVALUATION_OPTIONS, edit_schedule_options
from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir

RECONSTRUCTION, PDS, REFINEMENT = 250, 60, 110  # 110: each of the 11 training views SDEdited once


def test_a_short_edit_reaches_the_target_colour_after_stage_2_and_keeps_the_background(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    scene = make_scene(tmp_path / "scene", size=64, num_views=12, objects=("red sphere",), seed=0).out_dir
    env = {**user_env, "OMP_NUM_THREADS": "1"}  # deterministic for a given machine, and fast on 2 shared cores
    run_cli(["ns-train", "pds", "--data", str(scene), "--output-dir", str(tmp_path / "runs"), "--timestamp", "edit",
             "--pipeline.source-prompt", "a red sphere", "--pipeline.target-prompt", "a blue sphere",
             "--pipeline.prior.model-id", str(embedded_toy_prior_dir()), "--pipeline.prior.dtype", "fp32",
             "--pipeline.guidance-scale", "7.5", "--pipeline.sdedit-guidance-scale", "7.5",
             "--pipeline.reconstruction-iterations", str(RECONSTRUCTION), "--pipeline.pds-iterations", str(PDS),
             "--pipeline.refinement-iterations", str(REFINEMENT), "--pipeline.change-view-every", "5",
             "--pipeline.render-scale", "0.5", "--pipeline.seed", "0", "--machine.seed", "0",
             "--steps-per-save", "100000", "--vis", "tensorboard", *edit_schedule_options(PDS),
             *NO_EVALUATION_OPTIONS, *CPU_NERFACTO_OPTIONS], env, cwd=tmp_path)  # fmt: skip
    renders = tmp_path / "runs" / "scene" / "pds" / "edit" / "renders"
    truth = load_scene_truth(scene)
    stage1 = measure_stage_renders(renders / "pds", renders / "reconstruction", truth)
    stage2 = measure_stage_renders(renders / "refinement", renders / "reconstruction", truth)
    reads, seen = stage2.reading("blue")
    # Measured here (OMP_NUM_THREADS=1, seed 0): blue in 11 of 11 views after stages 1 and 2, background 22.2 dB
    # after stage 1 and 24.2 dB after stage 2 (at 400 + 100 reconstruction + PDS iterations: 11 of 11, 24 dB).
    assert seen == 11 and reads >= 8, stage2.colours
    assert stage2.reading("red")[0] == 0, stage2.colours  # stage 2 does not pull the scene back to the source
    assert stage2.reading("blue")[0] >= stage1.reading("blue")[0] - 1, (stage1.colours, stage2.colours)
    assert stage2.background_psnr > 20, stage2.background_psnr
