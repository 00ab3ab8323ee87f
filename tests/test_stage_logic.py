"""The edit's whole stage logic on a stub scene kind (tests/stub_scene.py), in-process with nerfstudio's real
Trainer and the tiny prior: stage switches, optimiser resets, stage 2's replacements, resume replay and the
non-finite guard, in seconds. The same logic on nerfacto and splatfacto is held by the slower end-to-end tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import adam_steps
from stub_scene import SDEDIT_EVERY, STAGES, DirectionColourScene, stub_trainer

from pds_nerfstudio.edit.log_panel import read_panels
from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.edit.trainer import PDSTrainer

def _training_images(trainer: PDSTrainer) -> torch.Tensor:
    datamanager = trainer.pipeline.datamanager
    return torch.stack([datamanager.current_image(view)[..., :3] for view in range(datamanager.num_train_images)])


def test_a_whole_edit_switches_stages_resets_optimisers_and_replaces_images(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path
) -> None:
    trainer = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path)
    pipeline, schedule = trainer.pipeline, trainer.pipeline.schedule
    assert isinstance(pipeline.scene, DirectionColourScene)
    loaded = copy.deepcopy(pipeline.config)
    weights_seen, adam_at_start = {}, {}
    for step in range(schedule.total):
        trainer.train_iteration(step)
        pipeline._after_step(step)
        weights_seen[step] = pipeline.model.colour.weight.detach().clone()
        adam_at_start[step] = adam_steps(trainer, "fields")
    for stage in (Stage.RECONSTRUCTION, Stage.PDS, Stage.REFINEMENT):  # each trains, edit stages from a fresh Adam
        start = schedule.start(stage)
        assert adam_at_start[start] == ({start + 1} if stage is Stage.RECONSTRUCTION else {1})
        assert not torch.equal(weights_seen[start], weights_seen[schedule.start(stage) + 1])
    assert adam_steps(trainer, "fields") == {schedule.refinement}

    renders = pipeline.refinement.stage1_renders
    assert renders is not None and renders.shape[0] == pipeline.datamanager.num_train_images
    sdedit_steps = range(schedule.start(Stage.REFINEMENT), schedule.total, SDEDIT_EVERY)
    replaced = {pipeline.refinement.sdedit_view(step) for step in sdedit_steps}
    images = _training_images(trainer)
    for view in range(images.shape[0]):  # stage 2 trains on the stage-1 renders, SDEdit replacing one every 3 steps
        assert torch.equal(images[view], renders[view].to(images)) is (view not in replaced), view
    assert len(replaced) == len(sdedit_steps)
    assert sorted(p.name for p in (trainer.base_dir / "renders").iterdir()) == ["pds", "reconstruction", "refinement"]
    assert pipeline.config == loaded  # run-time state lives in the pipeline, not in its config

    (panel,) = read_panels(trainer.base_dir)  # stage 1's log panel (log_every 100: its first step only)
    view = pipeline.pds.view_for_step(schedule.start(Stage.PDS))
    names = pipeline.datamanager.train_dataparser_outputs.image_filenames
    assert panel.step == schedule.start(Stage.PDS) and panel.image_name == Path(names[view]).stem
    source = pipeline.datamanager.original_image(view)[..., :3].numpy()
    assert panel.source.shape == source.shape and abs(panel.source - source).max() <= 1 / 255 + 1e-6
    assert panel.render.shape == source.shape == panel.gradient.shape
    assert (panel.gradient == panel.gradient[..., :1]).all() and 0.5 < panel.gradient.max() <= 1  # a grey magnitude


def test_a_resumed_edit_replays_stage_2_and_ends_where_the_uninterrupted_one_ends(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path
) -> None:
    first = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path)
    first.train()
    models = first.checkpoint_dir
    steps = sorted(int(p.stem.split("-")[1]) for p in models.glob("step-*.ckpt"))
    assert {2, 6, 18} <= set(steps)  # every stage's end
    resume_at = 10  # a checkpoint in stage 2 (steps 7 to 18), after the replacements of steps 7 and 10
    assert resume_at in steps and first.pipeline.schedule.stage_at(resume_at) is Stage.REFINEMENT

    resumed = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, "resumed", trainer_options=dict(load_dir=models,
                           load_step=resume_at))  # fmt: skip
    assert resumed._start_step == resume_at + 1
    assert adam_steps(resumed, "fields") == {resume_at + 1 - resumed.pipeline.schedule.start(Stage.REFINEMENT)}  # its state
    resumed.train()
    assert torch.equal(_training_images(resumed), _training_images(first))  # the same images, replayed
    last = max(int(p.stem.split("-")[1]) for p in resumed.checkpoint_dir.glob("step-*.ckpt"))
    assert last == first.pipeline.schedule.total - 1


def test_non_finite_steps_never_reach_the_scene_and_too_many_stop_the_run(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, max_nonfinite_steps=2)
    schedule = trainer.pipeline.schedule
    for step in range(schedule.start(Stage.PDS)):
        trainer.train_iteration(step)
        trainer.pipeline._after_step(step)
    before = trainer.pipeline.model.colour.weight.detach().clone()
    render_view = DirectionColourScene.render_view

    def poisoned(self, cameras, view):  # a render whose guidance loss is NaN (an fp16 overflow, say)
        render = render_view(self, cameras, view)
        render.rgb = render.rgb * float("nan")
        return render

    monkeypatch.setattr(DirectionColourScene, "render_view", poisoned)
    step = schedule.start(Stage.PDS)
    trainer.train_iteration(step)  # skipped, counted
    assert torch.equal(trainer.pipeline.model.colour.weight, before)
    with pytest.raises(SystemExit, match=r"2 iterations in a row up to step \d+ \(pds\) gave non-finite loss"):
        trainer.train_iteration(step + 1)
    assert torch.equal(trainer.pipeline.model.colour.weight, before)


def test_a_finished_edit_says_so_and_other_stage_lengths_are_refused_before_anything_is_written(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path)
    first.train()
    models, last = first.checkpoint_dir, first.pipeline.schedule.total - 1
    capsys.readouterr()

    with pytest.raises(SystemExit) as finished:  # the same lengths, from the last checkpoint: nothing to do
        stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, "again", trainer_options=dict(load_dir=models))
    assert finished.value.code == 0
    said = " ".join(capsys.readouterr().out.split())
    assert f"is finished: its checkpoint is at step {last}, the last of its {last + 1} steps" in said
    assert "ns-render interpolate --load-config" in said
    assert not (first.base_dir.parent / "again").exists()  # nothing written

    lengths = dict(STAGES, pds_iterations=STAGES["pds_iterations"] + 2)
    with pytest.raises(SystemExit) as longer:
        stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, "longer", trainer_options=dict(load_dir=models), **lengths)
    message = str(longer.value.code)
    assert message.startswith("error:") and "\n" not in message and "--pipeline.pds-iterations" in message
    stored, asked = (" + ".join(str(n) for n in (*options.values(),)) for options in (STAGES, lengths))
    assert f"stage lengths {stored}" in message and f"asks for {asked}" in message
    assert not (first.base_dir.parent / "longer").exists()


CONVERGING = dict(stop_when_converged=True, pds_iterations=60, refinement_iterations=300, convergence_window=2,
                  convergence_patience=2, convergence_threshold=0.3, convergence_min_iterations=4)  # fmt: skip


def test_stages_that_converge_end_early_and_a_resumed_run_ends_them_where_the_first_did(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, **CONVERGING)
    first.train()
    said = " ".join(capsys.readouterr().out.split())
    ends = json.loads((first.base_dir / "stage_ends.json").read_text())
    schedule, views = first.pipeline.schedule, first.pipeline.datamanager.num_train_images
    assert ends["pds"]["iterations"] == schedule.pds < 60 and ends["pds"]["cap"] == 60
    assert ends["refinement"]["iterations"] == schedule.refinement < 300
    assert schedule.refinement >= views * SDEDIT_EVERY  # every view refined once before it may end
    for stage, number in (("pds", 1), ("refinement", 2)):
        assert ends[stage]["reason"].startswith("converged")
        assert ends[stage]["seconds"] > 0  # the stage's wall time, for the fidelity report
        assert f"Stage {number} ({stage}) ended at step {ends[stage]['last_step']}, after {ends[stage]['iterations']}" in said
    assert ends["pds"]["last_step"] == schedule.start(Stage.REFINEMENT) - 1
    steps = sorted(int(p.stem.split("-")[1]) for p in first.checkpoint_dir.glob("step-*.ckpt"))
    assert steps[-1] == schedule.total - 1 and ends["pds"]["last_step"] in steps  # the edit's end, each stage's end
    assert len(list((first.base_dir / "renders" / "refinement").glob("*.png"))) == views
    checks = (first.base_dir / "convergence.csv").read_text().splitlines()  # every check's ratio, for tuning
    assert checks[0] == "stage,step,iterations,ratio" and {line.split(",")[0] for line in checks[1:]} == {"pds", "refinement"}
    assert all(int(line.split(",")[2]) % CONVERGING["convergence_window"] == 0 for line in checks[1:])

    resume_at = 5  # in stage 1 (from step 3), before it converged
    assert resume_at in steps and resume_at < ends["pds"]["last_step"]
    resumed = stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, "resumed",
                           trainer_options=dict(load_dir=first.checkpoint_dir, load_step=resume_at), **CONVERGING)  # fmt: skip
    resumed.train()
    def steps_only(record: dict) -> dict:  # the seconds each process ran a stage differ; where it ended may not
        return {stage: {k: v for k, v in end.items() if k != "seconds"} for stage, end in record.items()}

    assert steps_only(json.loads((resumed.base_dir / "stage_ends.json").read_text())) == steps_only(ends)
    assert torch.equal(resumed.pipeline.model.colour.weight, first.pipeline.model.colour.weight)

    with pytest.raises(SystemExit) as finished:  # the shortened edit is finished at its own last step
        stub_trainer(tiny_scene, tiny_prior_dir, tmp_path, "again", trainer_options=dict(load_dir=resumed.checkpoint_dir),
                     **CONVERGING)  # fmt: skip
    assert finished.value.code == 0
