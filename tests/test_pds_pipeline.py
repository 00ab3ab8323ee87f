"""The `pds` pipeline in-process on a tiny scene with the tiny prior: stages 1 and 2, viewer, options."""

from __future__ import annotations

import copy
from unittest import mock
from pathlib import Path

import pytest
import torch
from conftest import tiny_pds_config

from nerfstudio.viewer.utils import parse_object
from nerfstudio.viewer.viewer_elements import ViewerElement
from pds_nerfstudio.edit.pipeline import EditPipeline
from pds_nerfstudio.edit.stages import Stage


@pytest.fixture(scope="module")
def pipeline(tiny_scene: Path, tiny_prior_dir: Path) -> EditPipeline:
    torch.manual_seed(0)
    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir).setup(device="cpu", test_mode="val")
    pipeline.train()
    return pipeline


def _grad_norms(parameters: list[torch.nn.Parameter]) -> float:
    return sum(float(p.grad.abs().sum()) for p in parameters if p.grad is not None)


def test_stage1_step_reaches_the_field_through_the_guidance_loss_alone(pipeline: EditPipeline) -> None:
    step = pipeline.schedule.start(Stage.PDS)
    groups = pipeline.get_param_groups()
    pipeline.zero_grad()
    outputs, loss_dict, metrics = pipeline.get_train_loss_dict(step)
    assert set(loss_dict) == {"guidance_loss"}  # the authors' stage 1: no proposal losses
    assert outputs["rgb"].shape == (32, 32, 3)
    assert 20 <= metrics["timestep"] < 980
    loss_dict["guidance_loss"].backward()
    assert _grad_norms(groups["fields"]) > 0, "the guidance gradient does not reach the field"

    before = {name: p.detach().clone() for name, p in pipeline.model.named_parameters()}
    torch.optim.Adam(groups["fields"], lr=1e-2).step()
    changed = {name for name, p in pipeline.model.named_parameters() if not torch.equal(before[name], p)}
    assert any(name.startswith("field.") for name in changed)


def test_proposal_losses_in_stage1_are_an_option_that_trains_the_proposal_networks(
    tiny_scene: Path, tiny_prior_dir: Path
) -> None:
    torch.manual_seed(0)
    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir, pds_proposal_losses=True).setup(device="cpu", test_mode="val")
    pipeline.train()
    _, loss_dict, _ = pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))
    assert set(loss_dict) == {"guidance_loss", "interlevel_loss", "distortion_loss"}
    (loss_dict["interlevel_loss"] + loss_dict["distortion_loss"]).backward()
    assert _grad_norms(pipeline.get_param_groups()["proposal_networks"]) > 0


def test_the_edit_freezes_camera_poses_and_averages_the_appearance_codes(tiny_scene: Path, tiny_prior_dir: Path) -> None:
    config = tiny_pds_config(tiny_scene, tiny_prior_dir)
    config.model.use_appearance_embedding = True
    pipeline = config.setup(device="cpu", test_mode="val")
    codes = pipeline.model.field.embedding_appearance.embedding.weight
    with torch.no_grad():
        codes.normal_()
    average = codes.detach().mean(dim=0)
    poses = list(pipeline.model.camera_optimizer.parameters())
    assert poses and codes.requires_grad

    frozen = pipeline.freeze_for_edit()
    assert {id(p) for p in frozen} == {id(p) for p in [*poses, codes]}
    assert not codes.requires_grad and not any(p.requires_grad for p in poses)
    torch.testing.assert_close(codes.detach(), average.expand_as(codes), rtol=0, atol=1e-6)
    pipeline.train()
    _, loss_dict, _ = pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))
    sum(loss_dict.values()).backward()
    assert codes.grad is None and all(p.grad is None for p in poses)
    assert _grad_norms(pipeline.get_param_groups()["fields"]) > 0  # the edit goes into the scene


def test_stage1_keeps_a_view_for_change_view_every_steps(pipeline: EditPipeline) -> None:
    start, every = pipeline.schedule.start(Stage.PDS), pipeline.config.change_view_every
    views = [pipeline.pds.view_for_step(start + offset) for offset in range(5 * every)]
    blocks = [views[i : i + every] for i in range(0, len(views), every)]
    assert all(len(set(block)) == 1 for block in blocks)
    assert len({block[0] for block in blocks}) > 1


def test_stage2_trains_on_stage1_renders_and_replaces_one_every_sdedit_every_steps(pipeline: EditPipeline) -> None:
    start = pipeline.schedule.start(Stage.REFINEMENT)
    manager = pipeline.datamanager
    views = range(manager.num_train_images)
    originals = [manager.original_image(v).clone() for v in views]
    replaced, previous = [], None
    for step in range(start, start + 21):
        pipeline.get_train_loss_dict(step)
        current = [manager.current_image(v).clone() for v in views]
        if previous is None:  # the first stage-2 step: every image is its view's stage-1 render, then one SDEdit
            renders = pipeline.refinement.stage1_renders
            assert renders is not None and renders.shape == (len(views), 32, 32, 3)
            changed = [v for v in views if not torch.equal(current[v], renders[v])]
        else:
            changed = [v for v in views if not torch.equal(current[v], previous[v])]
        if (step - start) % pipeline.config.sdedit_every == 0:
            assert changed == [pipeline.refinement.sdedit_view(step)]
            replaced.append(changed[0])
        else:
            assert changed == []
        previous = current
    assert len(replaced) == 3 and len(set(replaced)) == 3
    untouched = [v for v in views if v not in replaced]
    assert all(torch.equal(manager.current_image(v), pipeline.refinement.stage1_renders[v]) for v in untouched)
    assert all(torch.equal(manager.original_image(v), originals[v]) for v in views)  # sources are kept


def test_sdedit_visits_every_view_once_per_cycle_in_a_seeded_order(pipeline: EditPipeline) -> None:
    start, every = pipeline.schedule.start(Stage.REFINEMENT), pipeline.config.sdedit_every
    count = pipeline.datamanager.num_train_images
    visits = [pipeline.refinement.sdedit_view(start + every * k) for k in range(3 * count)]
    cycles = [visits[i : i + count] for i in range(0, len(visits), count)]
    assert all(sorted(cycle) == list(range(count)) for cycle in cycles)
    assert cycles[0] != cycles[1] and cycles[0] != list(range(count))  # drawn, not in order
    assert visits == [pipeline.refinement.sdedit_view(start + every * k) for k in range(3 * count)]  # a function of the step
    pipeline.config.sdedit_order = "in-order"  # the authors' order
    try:
        assert [pipeline.refinement.sdedit_view(start + every * k) for k in range(2 * count)] == list(range(count)) * 2
    finally:
        pipeline.config.sdedit_order = "shuffled"


def test_viewer_shows_stage_and_edits_prompts_and_guidance(pipeline: EditPipeline) -> None:
    elements = {element.name: element for _, element in parse_object(pipeline, ViewerElement, "Custom Elements")}
    assert {"Edit stage", "Source prompt", "Target prompt", "Guidance scale"} <= set(elements)
    pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))
    assert "pds" in elements["Edit stage"].value

    loaded = (pipeline.config.target_prompt, pipeline.config.guidance_scale)
    elements["Target prompt"].value = "a green sphere"
    elements["Target prompt"].cb_hook(elements["Target prompt"])
    assert pipeline.live.guidance.target_prompt == "a green sphere"
    elements["Target prompt"].value = "  "
    elements["Target prompt"].cb_hook(elements["Target prompt"])
    assert pipeline.live.guidance.target_prompt == "a green sphere"  # an empty prompt is refused

    elements["Guidance scale"].value = 30.0
    elements["Guidance scale"].cb_hook(elements["Guidance scale"])
    assert pipeline.live.guidance.guidance_scale == 30.0
    elements["Guidance scale"].value = 0.0
    elements["Guidance scale"].cb_hook(elements["Guidance scale"])
    assert pipeline.live.guidance.guidance_scale == 30.0
    assert (pipeline.config.target_prompt, pipeline.config.guidance_scale) == loaded  # the config is what was loaded

    prior = pipeline.prior()
    with mock.patch.object(prior, "text_embeddings", wraps=prior.text_embeddings) as embeddings, mock.patch.object(
        prior, "eps_fn", wraps=prior.eps_fn
    ) as eps_fn:
        pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS) + 1)
        prompts = [call.args[0][0] for call in embeddings.call_args_list]
        scales = [call.args[0] for call in eps_fn.call_args_list]
    assert "a green sphere" in prompts and scales == [30.0]  # the next step guides with what the viewer set


def test_prior_weights_stay_out_of_the_checkpoint(pipeline: EditPipeline) -> None:
    pipeline.prior()
    keys = pipeline.state_dict().keys()
    assert not [key for key in keys if any(part in key for part in ("unet", "vae", "text_encoder", "_prior"))]
    assert "edit_stage_lengths" in keys  # the checkpoint format: kept


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"target_prompt": ""}, "--pipeline.target-prompt"),
        ({"source_prompt": " "}, "--pipeline.source-prompt"),
        ({"guidance_scale": 0.0}, "--pipeline.guidance-scale"),
        ({"min_step_ratio": 0.5, "max_step_ratio": 0.4}, "--pipeline.min-step-ratio"),
        ({"max_step_ratio": 1.5}, "--pipeline.min-step-ratio"),
        ({"pds_iterations": -1}, "--pipeline.pds-iterations"),
        ({"render_scale": 0.0}, "--pipeline.render-scale"),
        ({"edit_region": "auto", "method": "sds", "source_prompt": ""}, "--pipeline.edit-region auto needs the source"),
        ({"edit_region": "auto", "edit_region_dilation": -1}, "--pipeline.edit-region-dilation"),
    ],
)
def test_bad_options_are_refused_before_the_scene_loads(
    tmp_path: Path, tiny_prior_dir: Path, options: dict, message: str
) -> None:
    missing_scene = tmp_path / "no-such-scene"  # loading it would fail with another error
    with pytest.raises(ValueError, match=message):
        tiny_pds_config(missing_scene, tiny_prior_dir, **options).setup(device="cpu", test_mode="val")


def test_face_scene_runs_stage1_at_reduced_resolution(face_scene: Path, tiny_prior_dir: Path) -> None:
    config = tiny_pds_config(face_scene, tiny_prior_dir, reconstruction_iterations=0, render_scale=1 / 16)
    pipeline = config.setup(device="cpu", test_mode="val")
    pipeline.train()
    for step in range(2):
        outputs, loss_dict, _ = pipeline.get_train_loss_dict(step)
        assert outputs["rgb"].shape == (32, 32, 3)  # 512x512 views at 1/16
        loss = sum(loss_dict.values())
        assert torch.isfinite(loss)
        loss.backward()
    assert _grad_norms(pipeline.get_param_groups()["fields"]) > 0


def test_every_draw_depends_on_its_seed_stream_and_index_only() -> None:
    """The draws' seeds as they were before they had names (resumed and earlier runs redraw the same values),
    and streams that never share a generator."""
    from pds_nerfstudio.edit.draws import Stream, generator, stage1_view

    for stream, index in ((Stream.GUIDANCE, 5), (Stream.SDEDIT, 5), (Stream.SDEDIT_ORDER, 2)):
        assert generator(42, stream, index).initial_seed() == 42 * 1_000_003 + index * 7 + int(stream)
    seeds = {generator(seed, stream, i).initial_seed() for seed in (0, 1) for stream in Stream for i in range(140_000)}
    assert len(seeds) == 2 * len(Stream) * 140_000
    assert stage1_view(42, 3, 11) == __import__("random").Random(42 * 1_000_003 + 3).randrange(11)


def test_each_scene_kind_owns_its_edit_optimisers_and_its_starting_checkpoints_options() -> None:
    from pds_nerfstudio.edit.trainer import PDSTrainerConfig
    from pds_nerfstudio.method_configs import pds_method, pds_splat_method
    from pds_nerfstudio.edit.pipeline import EditPipelineConfig
    from pds_nerfstudio.scenes.nerfacto import APPEARANCE_KEY, NerfactoScene, NerfactoSceneConfig
    from pds_nerfstudio.scenes.splatfacto import SplatfactoScene, SplatfactoSceneConfig

    assert set(NerfactoScene.edit_optimizers()) == {"fields", "proposal_networks"}
    assert set(SplatfactoScene.edit_optimizers()) == {"means", "features_dc", "features_rest", "opacities", "scales", "quats"}
    for method, kind in ((pds_method, NerfactoScene), (pds_splat_method, SplatfactoScene)):
        assert method.config.pipeline.scene_kind is kind
        assert method.config.edit_optimizers.keys() == kind.edit_optimizers().keys()
    for pipeline in (EditPipelineConfig(scene=NerfactoSceneConfig()), EditPipelineConfig(scene=SplatfactoSceneConfig())):
        trainer = PDSTrainerConfig(pipeline=pipeline)  # the default: the kind's own
        assert trainer.edit_optimizers.keys() == pipeline.scene_kind.edit_optimizers().keys()

    model = copy.deepcopy(pds_method.config.pipeline.model)
    assert not model.use_appearance_embedding  # the authors' recipe
    assert NerfactoScene.adopt_starting_checkpoint(model, {}) is None and not model.use_appearance_embedding
    message = NerfactoScene.adopt_starting_checkpoint(model, {APPEARANCE_KEY: torch.zeros(11, 8)})
    assert model.use_appearance_embedding and model.appearance_embed_dim == 8 and "8 per view" in message
    assert NerfactoScene.adopt_starting_checkpoint(model, {APPEARANCE_KEY: torch.zeros(11, 8)}) is None  # it fits
    assert NerfactoScene.adopt_starting_checkpoint(model, {}) is None and not model.use_appearance_embedding
    assert SplatfactoScene.adopt_starting_checkpoint(pds_splat_method.config.pipeline.model, {APPEARANCE_KEY: 0}) is None
