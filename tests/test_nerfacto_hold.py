"""A NeRF edit that holds its source outside the edit region (`--pipeline.scene.hold-outside-region`,
pds_nerfstudio/scenes/nerfacto_hold.py): outside the region the field is the source's exactly, whatever the edit's
steps do to the shared hash grid; inside it the edited field renders; the kept source travels with the checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import samples_at, tiny_pds_config

from nerfstudio.data.scene_box import SceneBox
from nerfstudio.field_components.field_heads import FieldHeadNames

from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.scenes.nerfacto import NerfactoSceneConfig
from pds_nerfstudio.scenes.nerfacto_hold import HoldableNerfactoField, keeps_source
from pds_nerfstudio.scenes.nerfacto_offline import OfflineNerfactoModelConfig

HEADS = (FieldHeadNames.DENSITY, FieldHeadNames.RGB)


def test_outside_the_region_the_field_is_the_source_whatever_the_edit_trains() -> None:
    torch.manual_seed(0)
    model = OfflineNerfactoModelConfig(hidden_dim=16, hidden_dim_color=16, num_levels=4, log2_hashmap_size=12).setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2, metadata={}
    )
    assert isinstance(model.field, HoldableNerfactoField)
    scene = NerfactoSceneConfig(hold_outside_region=True).setup(model=model)
    points = torch.rand(400, 3) * 1.6 - 0.8
    inside = points[:, 0] > 0
    region = lambda p: (p[..., 0] > 0).float()  # noqa: E731  (half of space)
    with torch.no_grad():
        source = {head: value.clone() for head, value in model.field.forward(samples_at(points)).items() if head in HEADS}

    scene.keep_source()
    assert keeps_source(model) and "points inside it" in scene.hold_source_outside(region)
    assert not [key for key in model.state_dict() if key.startswith("field.hold")]  # the copy is the model's, once
    optimizer = torch.optim.Adam(model.field.parameters(), lr=0.05)
    for _ in range(3):  # an edit that pushes the whole field, hash grid and colour network, everywhere
        outputs = model.field.forward(samples_at(points))
        (outputs[FieldHeadNames.RGB].sum() - outputs[FieldHeadNames.DENSITY].mean()).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(p.grad is None for p in model.source_hold.parameters())  # frozen
    with torch.no_grad():
        held = model.field.forward(samples_at(points))
    for head in HEADS:
        assert torch.equal(held[head][~inside], source[head][~inside]), head  # bit-identical outside
        assert (held[head][inside] - source[head][inside]).abs().amax() > 1e-3, head  # the edit inside

    assert scene.hold_source_outside(None) is None  # no region: the edited field everywhere
    with torch.no_grad():
        assert (model.field.forward(samples_at(points))[FieldHeadNames.RGB][~inside] - source[FieldHeadNames.RGB][~inside]).abs().amax() > 1e-3
    scene.config.hold_outside_region = False
    del model.source_hold
    scene.keep_source()
    assert not keeps_source(model)


def test_the_kept_source_travels_with_the_checkpoint_and_holds_in_a_loaded_run(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path
) -> None:
    """An edit in a box with the hold: stage 1 keeps the source field where it starts; a pipeline that loads the
    checkpoint (ns-render, ns-viewer, a resumed run) holds the same source outside the box and renders as the run."""
    options = dict(edit_region="box", edit_region_obb_center=(0.0, 0.0, 0.0), edit_region_obb_scale=(0.3, 0.3, 0.3),
                   hold_outside_region=True)  # fmt: skip
    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir, **options).setup(device="cpu", test_mode="val")
    pipeline.run_dir = tmp_path / "run"
    pipeline.train()
    pipeline.scene.begin_edit()  # as the trainer does where stage 1 starts (the appearance codes averaged)
    before = {key: value.clone() for key, value in pipeline.model.field.state_dict().items()}
    optimizer = torch.optim.Adam([p for p in pipeline.model.field.parameters() if p.requires_grad], lr=0.05)
    for step in range(pipeline.schedule.start(Stage.PDS), pipeline.schedule.start(Stage.PDS) + 2):
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert keeps_source(pipeline.model) and pipeline.model.field.hold is not None
    kept = pipeline.model.source_hold.field.state_dict()
    assert all(torch.equal(kept[key], value) for key, value in before.items())  # the source, as the edit began
    assert any(not torch.equal(pipeline.model.field.state_dict()[key], value) for key, value in before.items())

    pipeline.eval()
    cameras = pipeline.datamanager.train_dataset.cameras
    rendered = pipeline.model.get_outputs_for_camera(cameras[2:3])["rgb"]
    viewer = tiny_pds_config(tiny_scene, tiny_prior_dir, **options).setup(device="cpu", test_mode="inference")
    viewer.load_state_dict(dict(pipeline.state_dict()))  # what ns-viewer and ns-render do with a run's checkpoint
    viewer.eval()
    assert keeps_source(viewer.model) and viewer.model.field.hold is not None
    torch.testing.assert_close(viewer.model.get_outputs_for_camera(cameras[2:3])["rgb"], rendered)
