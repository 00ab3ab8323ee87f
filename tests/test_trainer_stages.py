"""The `pds` trainer's stages, in-process with nerfstudio's real Trainer: each edit stage starts with fresh
optimisers and the authors' warm-up, camera poses stay frozen, and every stage's result is checkpointed."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import adam_steps, start_trainer, tiny_pds_config

from pds_nerfstudio import compat
from pds_nerfstudio.method_configs import nerfacto_optimizers
from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.edit.trainer import PDSTrainer, PDSTrainerConfig
from pds_nerfstudio.scenes.nerfacto import NerfactoScene

compat.allow_nerfstudio_checkpoints()


def make_trainer(scene: Path, prior: Path, out: Path, **pipeline_options: object) -> PDSTrainer:
    options = dict(reconstruction_iterations=3, pds_iterations=3, refinement_iterations=4)
    options.update(pipeline_options)
    config = PDSTrainerConfig(
        method_name="pds", output_dir=out, timestamp="run", vis="tensorboard", mixed_precision=False,
        pipeline=tiny_pds_config(scene, prior, **options), optimizers=nerfacto_optimizers(),
    )  # fmt: skip
    return start_trainer(config)


def test_each_edit_stage_starts_fresh_with_the_authors_warm_up_and_frozen_poses(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_scene, tiny_prior_dir, tmp_path)
    pipeline, schedule = trainer.pipeline, trainer.pipeline.schedule
    poses = list(pipeline.model.camera_optimizer.parameters())
    assert set(trainer.optimizers.optimizers) == {"proposal_networks", "fields", "camera_opt"}
    reference = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-2)
    warm_up = NerfactoScene.edit_optimizers()["fields"]["scheduler"].setup().get_scheduler(reference, lr_init=1e-2)
    reference.step()
    warm_up.step()
    lr_after_one_step = warm_up.get_last_lr()[0]  # 1e-2 * sin(pi / 2 / 1000): the authors' warm-up has begun
    assert lr_after_one_step < 1e-4

    for step in range(schedule.total):
        trainer.train_iteration(step)
        pipeline._after_step(step)
        if step == schedule.start(Stage.PDS) - 1:
            reconstructed_poses = [p.detach().clone() for p in poses]
            assert adam_steps(trainer, "fields") == {step + 1}
        if step in (schedule.start(Stage.PDS), schedule.start(Stage.REFINEMENT)):
            assert set(trainer.optimizers.optimizers) == {"proposal_networks", "fields"}  # no camera optimiser
            assert adam_steps(trainer, "fields") == {1}  # fresh Adam state where the stage starts
            assert trainer.optimizers.optimizers["fields"].param_groups[0]["lr"] == lr_after_one_step
            assert not trainer.mixed_precision
    assert adam_steps(trainer, "fields") == {schedule.refinement}
    assert not any(p.requires_grad for p in poses)
    for pose, reconstructed in zip(poses, reconstructed_poses):
        assert torch.equal(pose, reconstructed), "the edit moved the cameras"


def test_every_stage_end_is_checkpointed_and_resumes_in_the_next_stage(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path
) -> None:
    trainer = make_trainer(tiny_scene, tiny_prior_dir, tmp_path / "first", pds_iterations=2, refinement_iterations=0)
    trainer.config.steps_per_save = 1000
    trainer.train()
    models = trainer.checkpoint_dir
    assert sorted(int(p.stem.split("-")[1]) for p in models.glob("step-*.ckpt")) == [2, 4]

    # Resumed from the end of stage 0, the edit starts stage 1 with fresh edit optimisers.
    config = trainer.config
    config.timestamp, config.load_dir, config.load_step = "second", models, 2
    resumed = config.setup(local_rank=0, world_size=1)
    resumed.setup()
    assert resumed._start_step == 3
    resumed.train_iteration(3)
    assert set(resumed.optimizers.optimizers) == {"proposal_networks", "fields"}
    assert adam_steps(resumed, "fields") == {1}
