"""Resuming an edit: the stage, the step and the edited training images come back after a kill."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import torch
import waiting
from conftest import console_script, run_cli, tiny_pds_config

from pds_nerfstudio import compat
from pds_nerfstudio.edit.stages import Stage
from test_ns_commands import TINY_NERFACTO, pds_args

compat.allow_nerfstudio_checkpoints()


def test_restore_edits_recomputes_the_replaced_images_exactly(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path
) -> None:
    config = tiny_pds_config(tiny_scene, tiny_prior_dir, sdedit_every=3)
    killed = config.setup(device="cpu", test_mode="val")
    killed.run_dir = tmp_path / "killed"
    start = killed.schedule.start(Stage.REFINEMENT)
    for step in range(start, start + 10):  # SDEdit at offsets 0, 3, 6, 9
        killed.get_train_loss_dict(step)
    views = range(killed.datamanager.num_train_images)
    expected = [killed.datamanager.current_image(v).clone() for v in views]

    replayed = {killed.refinement.sdedit_view(s) for s in range(start, start + 10, 3)}
    assert killed.refinement.stage1_renders is not None
    for view in set(views) - replayed:  # not replaced yet: still the stage-1 render, not the source photo
        assert torch.equal(expected[view][..., :3], killed.refinement.stage1_renders[view]), view

    resumed = config.setup(device="cpu", test_mode="val")
    resumed.run_dir = tmp_path / "resumed"
    restored = resumed.restore_edits(start + 10, previous_run=killed.run_dir)
    assert restored == len(replayed)
    for view in views:
        assert torch.equal(resumed.datamanager.current_image(view), expected[view]), view
    assert len(list((resumed.run_dir / "renders" / "pds").glob("*.png"))) == len(views)  # for the next resume


def test_sigkill_mid_refinement_then_load_dir_resumes_in_stage_2(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    args = [
        "ns-train", "pds", "--data", str(tiny_scene), "--output-dir", str(tmp_path), "--steps-per-save", "4",
        *TINY_NERFACTO, *pds_args(tiny_prior_dir, 2, 2, 60), "--pipeline.sdedit-every", "3",
    ]  # fmt: skip
    models = tmp_path / tiny_scene.name / "pds" / "killed" / "nerfstudio_models"
    with waiting.running([console_script(args[0]), *args[1:], "--timestamp", "killed"], user_env, tmp_path,
                         merge_output=True) as process:  # fmt: skip
        output = waiting.Output(process)  # read as it comes, so a full pipe never blocks it
        waiting.wait_for(lambda: (models / "step-000000016.ckpt").exists(), process, "a checkpoint in stage 2",
                         output)  # fmt: skip
        process.send_signal(signal.SIGKILL)
        process.wait()
    last = max(int(p.stem.split("-")[1]) for p in models.glob("step-*.ckpt"))
    assert 16 <= last < 63

    output = run_cli([*args, "--timestamp", "resumed", "--load-dir", str(models)], user_env, cwd=tmp_path).stdout
    message = re.search(r"Resuming the edit at step (\d+) \((\w+)\); (\d+) edited images restored", output)
    assert message is not None, output[-3000:]
    assert int(message.group(1)) == last + 1
    assert message.group(2) == "refinement"
    assert int(message.group(3)) >= 1
    progress = [(int(step), float(percent)) for step, percent in re.findall(r"(\d+) \((\d+\.\d\d)%\)", output)]
    assert progress, output[-3000:]  # nerfstudio's column "step (percent)": step / 64, the stages' total
    assert all(step > last and abs(percent - 100 * step / 64) < 0.01 for step, percent in progress), progress
    resumed = tmp_path / tiny_scene.name / "pds" / "resumed" / "nerfstudio_models"
    assert max(int(p.stem.split("-")[1]) for p in resumed.glob("step-*.ckpt")) == 63
