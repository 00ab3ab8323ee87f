"""The edit region (`--pipeline.edit-region auto`): per-view masks fused in 3D with depth
(pds_nerfstudio/edit/edit_region.py), held to a procedural scene whose object is known; and the pipeline that
estimates it where stage 1 starts, weights stage 1's guidance by it and keeps the source outside it in stage 2."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import tiny_pds_config
from PIL import Image

from pds_nerfstudio.edit.edit_region import (
    RegionGrid,
    box_grid,
    fill_holes,
    fuse,
    grow_in_view,
    inlier_box,
    surface_points,
)
from pds_nerfstudio.edit.region_store import EditRegion
from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.measure import fidelity_measures as fm
from pds_nerfstudio.synthetic.procedural_scene import make_scene


@pytest.fixture(scope="module")
def sphere(tmp_path_factory: pytest.TempPathFactory) -> fm.SceneTruth:
    return fm.load_scene_truth(make_scene(tmp_path_factory.mktemp("region") / "scene", size=48, num_views=12,
                                          objects=("red sphere",), seed=1).out_dir)  # fmt: skip


def _points(truth: fm.SceneTruth) -> torch.Tensor:
    return torch.stack([
        surface_points(torch.from_numpy(v.origin).float().expand(*v.depth.shape, 3), torch.from_numpy(v.dirs).float(),
                       torch.from_numpy(np.where(np.isfinite(v.depth), v.depth, 1e3)).float())
        for v in truth.views
    ])  # fmt: skip


def test_the_fused_region_of_some_views_is_the_object_in_every_view(sphere: fm.SceneTruth) -> None:
    points = _points(sphere)
    masks = torch.from_numpy(np.stack([v.mask for v in sphere.views])).float()
    train = [i for i in range(12) if i % 4 != 3]  # 9 views fuse; 3 are never seen by the fusion
    masks_with_sky = masks.clone()
    masks_with_sky[train, 0, :] = 1.0  # a mask that spills onto the sky (depth 1000) must not size the grid
    grid = fuse(points[train], masks_with_sky[train], dilation=1)
    region = grid.lookup(points).numpy() > 0.5
    for i, view in enumerate(sphere.views):
        assert fm.iou(region[i], view.mask) > 0.8, (i, fm.iou(region[i], view.mask))
    wider = fuse(points[train], masks[train], dilation=8).lookup(points).numpy() > 0.5
    assert (wider >= region).all() and wider.sum() > region.sum()  # dilation only grows the region
    with pytest.raises(ValueError, match="nothing to edit"):
        fuse(points, torch.zeros_like(masks))


def test_a_grown_region_holds_the_shape_a_shape_edit_draws(sphere: fm.SceneTruth, tmp_path: Path) -> None:
    """red sphere -> red cube: the cube (same place, size and yaw) reaches past the sphere at its corners, where the
    sphere's views see the ground behind; each view's region grown by 0.3 of its width (a yawed cube's corners reach
    sqrt(2) - 1 of the radius, 0.21 of the width, past the sphere in 3D, and further in a view from above) holds
    the pixels the cube will cover."""
    cube = fm.load_scene_truth(make_scene(tmp_path / "cube", size=48, num_views=12, objects=("red cube",), seed=1).out_dir)
    masks = torch.from_numpy(np.stack([v.mask for v in sphere.views])).float()
    sphere_mask, cube_mask = (torch.from_numpy(np.stack([v.mask for v in t.views])) for t in (sphere, cube))
    seen = fuse(_points(sphere), masks, dilation=1).lookup(_points(sphere))
    grown = torch.stack([grow_in_view(view, 0.3) for view in seen]) > 0.5
    corners = cube_mask & ~sphere_mask
    assert (seen > 0.5)[corners].float().mean() < 0.2 and grown[corners].float().mean() > 0.9
    assert grown[cube_mask].float().mean() > 0.95 and grown[sphere_mask].float().mean() > 0.99
    assert grown[~(sphere_mask | cube_mask)].float().mean() < 0.1
    disc = torch.zeros(41, 41)
    disc[20, 20] = 1.0
    disc = grow_in_view(disc, 5.0)  # one pixel (width 2 / sqrt(pi)) grown by 5 widths: a disc of radius 5.6
    assert int(disc.sum()) == sum(1 for y in range(-5, 6) for x in range(-5, 6) if x * x + y * y <= 5.64**2)


def test_a_region_grid_is_zero_outside_its_box_and_round_trips() -> None:
    grid = RegionGrid(torch.zeros(3), torch.ones(3), torch.ones(8, 8, 8))
    inside, outside = torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([[2.0, 0.5, 0.5]])
    assert grid.lookup(inside).item() == pytest.approx(1.0) and grid.lookup(outside).item() == 0.0
    values = torch.zeros(8, 8, 8)
    values[7, 0, 0] = 1.0  # the voxel at high x, low y and z
    corner = RegionGrid(torch.zeros(3), torch.ones(3), values)
    assert corner.lookup(torch.tensor([[15 / 16, 1 / 16, 1 / 16]])).item() == pytest.approx(1.0)
    assert corner.lookup(torch.tensor([[1 / 16, 1 / 16, 15 / 16]])).item() == 0.0
    again = RegionGrid.from_state(corner.state())
    assert torch.equal(again.values, corner.values) and torch.equal(again.lower, corner.lower)
    points = torch.cat([torch.rand(200, 3), torch.tensor([[500.0, 0.5, 0.5]])])
    low, high = inlier_box(points)
    assert (high <= 1.0).all() and (low >= 0.0).all()  # the far point is left out


@pytest.fixture()
def pipeline(tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path):
    torch.manual_seed(0)
    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir, edit_region="auto").setup(device="cpu", test_mode="val")
    pipeline.train()
    pipeline.run_dir = tmp_path / "run"
    return pipeline


def test_stage1_estimates_writes_and_uses_the_region(pipeline) -> None:
    step = pipeline.schedule.start(Stage.PDS)
    pipeline.get_train_loss_dict(step)
    region, run = pipeline.region, pipeline.run_dir
    count = pipeline.datamanager.num_train_images
    assert region is not None and region.views.shape == (count, 32, 32) and region.source_renders.shape == (count, 32, 32, 3)
    assert 0 <= float(region.views.min()) and float(region.views.max()) <= 1
    names = [Path(n).stem for n in pipeline.datamanager.train_dataparser_outputs.image_filenames]
    for name, weight in zip(names, region.views):
        written = np.asarray(Image.open(run / "edit_region" / f"{name}.png"), dtype=np.float32) / 255
        np.testing.assert_allclose(written, weight.numpy(), atol=1e-6)
        assert (run / "renders" / "reconstruction" / f"{name}.png").is_file()
    assert (run / "edit_region" / "region.pt").is_file()
    again = pipeline.region_store.read(run)  # what a resumed run reads: the same region
    assert torch.equal(again.views, region.views) and torch.equal(again.source_renders, region.source_renders)


def test_no_guidance_reaches_the_scene_outside_the_region(pipeline) -> None:
    step = pipeline.schedule.start(Stage.PDS)
    count = pipeline.datamanager.num_train_images
    renders = torch.rand(count, 32, 32, 3)
    pipeline.use_region(EditRegion(torch.zeros(count, 32, 32), renders))
    pipeline.zero_grad()
    _, losses, metrics = pipeline.get_train_loss_dict(step)
    losses["guidance_loss"].backward()
    assert float(metrics["grad_norm"]) > 0.0  # the prior still pulls the image ...
    assert pipeline.gradient_norm() == 0.0  # ... but none of it reaches the scene
    pipeline.config.edit_region_outside_guidance = 0.25  # a share passed outside the region reaches it
    try:
        pipeline.zero_grad()
        _, losses, _ = pipeline.get_train_loss_dict(step)
        losses["guidance_loss"].backward()
        assert pipeline.gradient_norm() > 0.0
    finally:
        pipeline.config.edit_region_outside_guidance = 0.0
    half = torch.zeros(count, 32, 32)
    half[:, :, :16] = 1.0
    pipeline.use_region(EditRegion(half, renders))
    pipeline.zero_grad()
    _, losses, _ = pipeline.get_train_loss_dict(step)
    losses["guidance_loss"].backward()
    assert pipeline.gradient_norm() > 0.0


def test_stage2_keeps_the_source_render_outside_the_region(pipeline) -> None:
    count = pipeline.datamanager.num_train_images
    source = torch.rand(count, 32, 32, 3)
    half = torch.zeros(count, 32, 32)
    half[:, :, :16] = 1.0
    pipeline.use_region(EditRegion(half, source))
    start = pipeline.schedule.start(Stage.REFINEMENT)
    for step in range(start, start + 3 * pipeline.config.sdedit_every):
        pipeline.get_train_loss_dict(step)
    for view in range(count):
        image = pipeline.datamanager.current_image(view)[..., :3]
        torch.testing.assert_close(image[:, 16:], source[view, :, 16:], rtol=0, atol=1e-6)  # outside: the source
        stage1 = pipeline.refinement.stage1_renders[view]
        if view not in [pipeline.refinement.sdedit_view(start + k * pipeline.config.sdedit_every) for k in range(3)]:
            torch.testing.assert_close(image[:, :16], stage1[:, :16].to(image), rtol=0, atol=1e-6)  # inside: the edit


def test_prompts_that_agree_everywhere_stop_the_edit_with_one_error_line(tiny_scene: Path, tiny_prior_dir: Path) -> None:
    from pds_nerfstudio.edit.region_store import EditRegionError

    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir, edit_region="auto", target_prompt="a red sphere").setup(
        device="cpu", test_mode="val")  # fmt: skip
    with pytest.raises(EditRegionError, match="the prior finds nothing to edit between 'a red sphere' and 'a red sphere'"):
        pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))


def test_the_keep_loss_holds_the_outside_at_the_source_render(pipeline) -> None:
    inside, source = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, 3)
    inside[0, :2] = 1.0  # the top half is the region
    region = EditRegion(inside, source)
    rgb = torch.full((4, 4, 3), 0.5)
    assert float(region.keep_loss(0, rgb)) == pytest.approx(0.5 * 3 * 0.25)  # half the pixels, 3 channels of 0.5^2
    assert float(region.keep_loss(0, torch.nn.functional.pad(rgb[2:], (0, 0, 0, 0, 0, 2)))) == 0.0  # outside at source
    torch.testing.assert_close(region.pixel_weight(0, (2, 2)), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))  # area average

    step = pipeline.schedule.start(Stage.PDS)
    count = pipeline.datamanager.num_train_images
    pipeline.use_region(EditRegion(torch.zeros(count, 32, 32), torch.rand(count, 32, 32, 3)))
    pipeline.zero_grad()
    _, losses, _ = pipeline.get_train_loss_dict(step)
    assert set(losses) == {"guidance_loss", "region_keep_loss"} and float(losses["region_keep_loss"]) > 0
    losses["region_keep_loss"].backward()
    assert pipeline.gradient_norm() > 0.0  # the outside is pulled towards the source render


def test_a_users_masks_replace_the_priors_and_a_missing_one_is_named(tiny_scene: Path, tiny_prior_dir: Path,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    from pds_nerfstudio.edit.region_store import EditRegionError

    masks = tmp_path / "masks"
    masks.mkdir()
    for path in sorted((tiny_scene / "masks").glob("*.png")):  # the scene's object labels, as white on black
        labels = np.asarray(Image.open(path))
        Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8)).save(masks / path.name)
    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir, edit_region="auto", edit_region_masks=masks).setup(
        device="cpu", test_mode="val")  # fmt: skip
    pipeline.run_dir = tmp_path / "run"
    with mock.patch.object(pipeline, "prior", side_effect=AssertionError("the prior's masks were asked for")):
        region = pipeline.edit_region(starts_edit=True)
    assert region.views.shape[0] == pipeline.datamanager.num_train_images and float(region.views.max()) > 0.5
    assert (pipeline.run_dir / "edit_region" / "region.pt").is_file()

    first = sorted(masks.iterdir())[0]
    first.unlink()
    again = tiny_pds_config(tiny_scene, tiny_prior_dir, edit_region="auto", edit_region_masks=masks).setup(
        device="cpu", test_mode="val")  # fmt: skip
    with pytest.raises(EditRegionError, match=f"has no mask for 1 of the .* training images \\({first.stem}\\)"):
        again.edit_region(starts_edit=True)
    with pytest.raises(ValueError, match="--pipeline.edit-region-masks .* is not a folder"):
        tiny_pds_config(tiny_scene, tiny_prior_dir, edit_region="auto", edit_region_masks=tmp_path / "none").validate()
    with pytest.raises(ValueError, match="--pipeline.edit-region-masks needs --pipeline.edit-region auto"):
        tiny_pds_config(tiny_scene, tiny_prior_dir, edit_region_masks=masks).validate()


def test_a_views_region_is_the_largest_value_along_the_stretch_its_render_comes_from() -> None:
    """A NeRF's median depth can lie in a haze in front of the face a mask saw; the stretch of the ray that carries
    the render reaches the face."""
    from pds_nerfstudio.edit.edit_region import largest_along

    grid = box_grid(torch.eye(3), torch.zeros(3), torch.full((3,), 0.5))
    origins = torch.tensor([[0.0, 0.0, -2.0]]).expand(4, 3)
    directions = torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3)
    near = torch.tensor([1.0, 1.0, 1.0, 1.9])  # the box holds distances 1.75 to 2.25 along these rays
    far = torch.tensor([1.0, 2.0, 1.5, 1.9])
    assert largest_along(grid.lookup, origins, directions, near, far).round().tolist() == [0.0, 1.0, 0.0, 1.0]
    torch.testing.assert_close(largest_along(grid.lookup, origins, directions, far, far),
                               grid.lookup(surface_points(origins, directions, far)))  # fmt: skip


def test_a_box_grid_is_the_oriented_box() -> None:
    from nerfstudio.data.scene_box import OrientedBox

    box = OrientedBox.from_params((0.1, -0.2, 0.3), (0.0, 0.0, 0.6), (0.4, 0.2, 0.3))  # yawed 0.6 rad
    grid = box_grid(box.R, box.T, box.S, resolution=96, softness=0)
    points = torch.rand(20000, 3) - 0.5 + torch.tensor([0.1, -0.2, 0.3])
    inside = box.within(points)
    local = ((points - box.T.float()) @ box.R.float()).abs() / (box.S.float() / 2)
    clear = (local.max(-1).values - 1).abs() > 0.06  # more than a voxel or so from the box's faces
    assert torch.equal(grid.lookup(points)[clear] > 0.5, inside[clear])
    assert inside.float().mean() > 0.01  # the points reach into the box


def test_a_grown_grid_holds_every_point_within_its_fraction_of_the_regions_width() -> None:
    """`RegionGrid.grown`: where a NeRF that holds its source lets a shape edit draw, in 3D."""
    grid = box_grid(torch.eye(3), torch.zeros(3), torch.tensor([0.4, 0.4, 0.2]), resolution=64)  # width 0.4
    grown = grid.grown(0.3)  # by 0.12, past the first grid's box
    cell = float(grid.upper[0] - grid.lower[0]) / 64
    skin = torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.2, 0.0], [0.0, 0.0, 0.1]]) * (1 - cell / torch.tensor([0.2, 0.2, 0.1]))
    assert bool((grid.lookup(skin) < 0.8).all())  # a voxel inside the box's faces: on the soft edge of the grid
    assert bool((grid.grown(0.0).lookup(skin) > 0.99).all())  # past it when grown by the held margin
    points = torch.rand(20000, 3) * 1.2 - 0.6
    # the distance from each point to the box
    distance = (points.abs() - torch.tensor([0.2, 0.2, 0.1])).clamp_min(0).norm(dim=-1)
    assert bool((grown.lookup(points)[distance < 0.12 - 0.02] > 0.5).all())  # a voxel or two from the ball's edge
    assert bool((grown.lookup(points)[distance > 0.12 + 0.03] == 0).all())
    assert bool(((grid.lookup(points) > 0.5) <= (grown.lookup(points) > 0.5)).all())
    assert float((points.abs() < torch.tensor([0.32, 0.32, 0.22])).all(-1).float().mean()) > 0.05


def test_a_users_box_is_the_region_and_the_viewer_shows_it(tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path) -> None:
    """`--pipeline.edit-region box`: the region is the box as every camera sees it; the scene's renders then carry
    the output `edit_region` (the viewer's output list), also after a checkpoint is loaded into a new pipeline."""
    options = dict(edit_region="box", edit_region_obb_center=(0.0, 0.0, 0.0), edit_region_obb_scale=(0.3, 0.3, 0.3))
    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir, **options).setup(device="cpu", test_mode="val")
    pipeline.run_dir = tmp_path / "run"
    cameras = pipeline.datamanager.train_dataset.cameras
    assert "edit_region" not in pipeline.model.get_outputs_for_camera(cameras[0:1])
    pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))
    region = pipeline.region
    assert region is not None and (tmp_path / "run" / "edit_region" / "region.pt").is_file()
    box = inside_box(options)
    for view in range(pipeline.datamanager.num_train_images):  # a pixel is in the region where it sees the box
        depth = pipeline.scene.render_surface(cameras, view).depth
        rays = cameras.generate_rays(camera_indices=view, keep_shape=True)
        inside = box(rays.origins + depth[..., None] * rays.directions)
        assert ((region.views[view] > 0.5) == inside).float().mean() > 0.95
    pipeline.eval()  # as the viewer renders
    outputs = pipeline.model.get_outputs_for_camera(cameras[3:4])
    assert outputs["edit_region"].shape == (*outputs["rgb"].shape[:2], 1)
    agrees = (outputs["edit_region"][..., 0] - region.views[3]).abs() <= 2 / 255  # a render's depth differs at edges
    assert agrees.float().mean() > 0.99
    own = pipeline.model.own_outputs_for_camera(cameras[3:4])  # what still renders and the measures read: no region
    assert "edit_region" not in own and torch.equal(own["rgb"], outputs["rgb"])

    state = {key: value for key, value in pipeline.state_dict().items()}
    viewer = tiny_pds_config(tiny_scene, tiny_prior_dir, **options).setup(device="cpu", test_mode="inference")
    viewer.load_state_dict(state)  # what ns-viewer and ns-render do with a run's checkpoint
    viewer.eval()
    shown = viewer.model.get_outputs_for_camera(cameras[3:4])["edit_region"]
    torch.testing.assert_close(shown, outputs["edit_region"])


def inside_box(options: dict):
    from nerfstudio.data.scene_box import OrientedBox

    box = OrientedBox.from_params(options["edit_region_obb_center"], (0.0, 0.0, 0.0), options["edit_region_obb_scale"])
    return lambda points: box.within(points.reshape(-1, 3)).reshape(points.shape[:-1])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"edit_region": "box"}, "--pipeline.edit-region box needs --pipeline.edit-region-obb-center"),
        ({"edit_region": "auto", "edit_region_obb_center": (0, 0, 0), "edit_region_obb_scale": (1, 1, 1)},
         "they need --pipeline.edit-region box"),
        ({"edit_region": "box", "edit_region_obb_center": (0, 0, 0), "edit_region_obb_scale": (1, 0, 1)},
         "--pipeline.edit-region-obb-scale must be > 0"),
        ({"edit_region": "auto", "edit_region_grow": -0.1}, "--pipeline.edit-region-grow"),
    ],
)
def test_region_options_are_refused_with_the_flag_named(tiny_scene: Path, tiny_prior_dir: Path, options: dict,
                                                         message: str) -> None:  # fmt: skip
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_pds_config(tiny_scene, tiny_prior_dir, **options).validate()


def test_a_views_region_has_no_holes() -> None:
    """A face that most views' masks left out (a lit top the prompts agree on), enclosed by the object's outline, is
    in the region; the ground outside the outline is not."""
    ring = torch.zeros(32, 32)
    ring[8:24, 8:24] = 1.0
    ring[12:20, 12:20] = 0.0
    filled = grow_in_view(ring, 0.0)
    assert torch.equal(filled[8:24, 8:24], torch.ones(16, 16)) and filled.sum() == 256
    open_side = ring.clone()
    open_side[12:20, 12:24] = 0.0  # a notch open to the outside is not a hole
    assert torch.equal(grow_in_view(open_side, 0.0), open_side)


def test_hole_filling_matches_scipy() -> None:
    """The plain-torch fill_holes against scipy's binary_fill_holes (4-connected background), on random masks whose
    holes touch each other only at corners, and on masks open to the border."""
    from scipy.ndimage import binary_fill_holes

    generator = torch.Generator().manual_seed(0)
    for density in (0.3, 0.5, 0.7):
        for _ in range(10):
            mask = torch.rand(24, 31, generator=generator) < density
            assert torch.equal(fill_holes(mask), torch.from_numpy(binary_fill_holes(mask.numpy())))
    diagonal = torch.ones(5, 5, dtype=torch.bool)
    diagonal[1, 1] = diagonal[2, 2] = False  # two holes meeting at a corner: still holes (4-connected)
    diagonal[3, 3] = False
    assert torch.equal(fill_holes(diagonal), torch.ones(5, 5, dtype=torch.bool))
