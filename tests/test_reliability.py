"""Refusals, atomic checkpoints and the non-finite guard of the `pds` trainer and pipeline."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import waiting
from conftest import console_script, tiny_pds_config

from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.edit.trainer import PDSTrainer, PDSTrainerConfig


def make_trainer(tmp_path: Path, **options: object) -> PDSTrainer:
    config = PDSTrainerConfig(method_name="pds", output_dir=tmp_path, timestamp="run", **options)
    config.machine.device_type = "cpu"
    return PDSTrainer(config)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"load_dir": Path("/no/such/run/nerfstudio_models")}, "holds no checkpoint"),
        ({"load_checkpoint": Path("/no/such/step-000000001.ckpt")}, "does not exist"),
    ],
)
def test_missing_checkpoints_are_refused_with_a_message(tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        make_trainer(tmp_path, **options).config.checkpoint_path()


def test_load_step_that_is_absent_lists_the_steps_found(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "step-000000004.ckpt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"found steps \[4\]"):
        make_trainer(tmp_path, load_dir=models, load_step=9).config.checkpoint_path()


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(tmp_path)
    trainer.pipeline = torch.nn.Linear(2, 2)  # type: ignore[assignment]
    trainer.optimizers = SimpleNamespace(optimizers={}, schedulers={})  # type: ignore[assignment]
    trainer.save_checkpoint(3)
    saved = trainer.checkpoint_dir / "step-000000003.ckpt"
    before = saved.read_bytes()

    def killed_while_writing(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"half a checkpo")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(torch, "save", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(6)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in trainer.checkpoint_dir.iterdir()) == ["step-000000003.ckpt"]  # nothing half-written
    assert torch.load(saved, map_location="cpu")["step"] == 3


def _ns_train_pds(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    prompts = ["--pipeline.source-prompt", "a red sphere", "--pipeline.target-prompt", "a blue sphere"]
    return waiting.run([console_script("ns-train"), "pds", *prompts, *args], env, cwd)


def test_cli_refuses_a_run_folder_in_use_and_an_incompatible_checkpoint(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    occupied = tmp_path / tiny_scene.name / "pds" / "run"
    occupied.mkdir(parents=True)
    (occupied / "config.yml").write_text("an earlier run\n")
    base = ["--data", str(tiny_scene), "--output-dir", str(tmp_path), "--pipeline.prior.model-id", str(tiny_prior_dir)]
    result = _ns_train_pds([*base, "--timestamp", "run"], user_env, tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "already holds a run" in result.stderr.strip().splitlines()[-1]
    assert (occupied / "config.yml").read_text() == "an earlier run\n"

    foreign = tmp_path / "splat.ckpt"
    torch.save({"step": 10, "pipeline": {"_model.gauss_params.means": torch.zeros(3, 3)}}, foreign)
    result = _ns_train_pds([*base, "--timestamp", "other", "--load-checkpoint", str(foreign)], user_env, tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "is not a nerfacto scene checkpoint" in result.stderr.strip().splitlines()[-1]


def test_out_of_gpu_memory_stops_with_the_memory_saving_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nerfstudio.engine.trainer import Trainer

    from pds_nerfstudio.edit.stages import StageSchedule

    def out_of_memory(self: Trainer, step: int) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "train_iteration", out_of_memory)
    trainer = make_trainer(tmp_path)
    from pds_nerfstudio.scenes.nerfacto import NerfactoScene

    scene = SimpleNamespace(memory_options=NerfactoScene.memory_options)  # nerfacto's own options are named
    trainer.pipeline = SimpleNamespace(schedule=StageSchedule(10, 10, 10), scene=scene)  # type: ignore[assignment]
    trainer._optimizer_stage = Stage.PDS  # the optimisers of the stage at step 12 are in place
    with pytest.raises(SystemExit) as stopped:
        trainer.train_iteration(12)
    message = str(stopped.value)
    assert "out of GPU memory at step 12 (pds)" in message
    for option in ("--pipeline.render-scale", "--pipeline.scene.render-chunk-size", "--pipeline.prior.dtype", "--load-dir"):
        assert option in message


@pytest.mark.parametrize(
    ("option", "group", "field", "value"),
    [("edit_optimizers", "fields", "lr", 0.0), ("optimizers", "proposal_networks", "lr", float("nan")),
     ("edit_optimizers", "proposal_networks", "lr_final", -1.0)],
)  # fmt: skip
def test_learning_rates_that_are_not_positive_are_refused_before_anything_is_written(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path, option: str, group: str, field: str, value: float
) -> None:
    from pds_nerfstudio.method_configs import nerfacto_optimizers

    trainer = make_trainer(tmp_path, pipeline=tiny_pds_config(tiny_scene, tiny_prior_dir), optimizers=nerfacto_optimizers())
    entry = getattr(trainer.config, option)[group]
    setattr(entry["scheduler" if field == "lr_final" else "optimizer"], field, value)
    with pytest.raises(SystemExit, match=f"--{option.replace('_', '-')}.{group.replace('_', '-')}.* must be a number > 0"):
        trainer.config.save_config()
    assert not (tmp_path / "unnamed").exists()
