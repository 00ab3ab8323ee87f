"""`ns-train pds-splat` on CPU through every stage, with nerfstudio's own commands on its result: `ns-render`,
`ns-viewer` and `ns-export gaussian-splat` (the edited .ply). The rasteriser is the plain-torch reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import waiting
from conftest import console_script, run_cli, viewer_output_until_loaded

from pds_nerfstudio import compat

compat.allow_nerfstudio_checkpoints()

SPLAT_OPTIONS = [
    "--pipeline.model.num-downscales", "0", "--pipeline.model.sh-degree", "1",
    "--steps-per-eval-image", "100000", "--steps-per-eval-all-images", "100000", "--vis", "tensorboard",
]  # fmt: skip


def _edit_args(prior: Path, lengths: tuple[int, int, int]) -> list[str]:
    return [
        "--pipeline.source-prompt", "a red sphere", "--pipeline.target-prompt", "a blue sphere",
        "--pipeline.prior.model-id", str(prior), "--pipeline.prior.dtype", "fp32",
        "--pipeline.reconstruction-iterations", str(lengths[0]), "--pipeline.pds-iterations", str(lengths[1]),
        "--pipeline.refinement-iterations", str(lengths[2]), "--pipeline.log-every", "2", "--steps-per-save", "1000",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def splat_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pds_nerfstudio.synthetic.procedural_scene import make_scene

    scene = tmp_path_factory.mktemp("splat") / "scene"
    make_scene(scene, size=32, num_views=8, objects=("red sphere",), seed=0, num_points=400)
    return scene


@pytest.fixture(scope="module")
def splat_run(splat_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("splat_run")
    run_cli(["ns-train", "pds-splat", "--data", str(splat_scene), "--output-dir", str(out), "--timestamp", "edit",
             *SPLAT_OPTIONS, *_edit_args(tiny_prior_dir, (20, 6, 6))], user_env, cwd=out)  # fmt: skip
    return out / splat_scene.name / "pds-splat" / "edit"


def test_pds_splat_runs_every_stage_and_keeps_each_stages_checkpoint(splat_run: Path) -> None:
    steps = sorted(int(p.stem.split("-")[1]) for p in (splat_run / "nerfstudio_models").glob("step-*.ckpt"))
    assert {19, 25, 31} <= set(steps)
    for stage in ("reconstruction", "pds", "refinement"):
        assert len(list((splat_run / "renders" / stage).glob("*.png"))) == 8, stage
    assert list((splat_run / "logs").glob("step-*_frame_*.png"))
    state = torch.load(splat_run / "nerfstudio_models" / "step-000000031.ckpt", map_location="cpu")
    assert state["pipeline"]["_model.gauss_params.means"].shape[1] == 3
    assert not [key for key in state["pipeline"] if "unet" in key or "vae" in key]  # no prior weights


def test_a_splat_edit_in_a_box_leaves_every_gaussian_outside_it_as_the_source_had_it(
    splat_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    """`ns-train pds-splat --pipeline.edit-region box`: the Gaussians outside the box end both edit stages exactly as
    the reconstruction left them; those inside were edited; the run keeps which ones (`edit_region/parts.pt`)."""
    result = run_cli(["ns-train", "pds-splat", "--data", str(splat_scene), "--output-dir", str(tmp_path), "--timestamp",
                      "edit", *SPLAT_OPTIONS, *_edit_args(tiny_prior_dir, (20, 6, 6)), "--pipeline.edit-region", "box",
                      "--pipeline.edit-region-obb-center", "0", "0", "0", "--pipeline.edit-region-obb-scale", "1", "1", "1"],
                     user_env, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / splat_scene.name / "pds-splat" / "edit"
    parts = torch.load(run / "edit_region" / "parts.pt")
    assert f"the edit trains the {int(parts.sum())} of {len(parts)} Gaussians" in result.stdout
    assert 0 < int(parts.sum()) < len(parts)
    states = [torch.load(run / "nerfstudio_models" / f"step-{step:09d}.ckpt", map_location="cpu")["pipeline"]
              for step in (19, 31)]  # the reconstruction's end, the edit's end
    for name in ("means", "features_dc", "opacities", "scales"):
        source, edited = (state[f"_model.gauss_params.{name}"] for state in states)
        assert torch.equal(source[~parts], edited[~parts]), name
    assert not torch.equal(states[0]["_model.gauss_params.features_dc"][parts], states[1]["_model.gauss_params.features_dc"][parts])


def test_ns_export_writes_the_edited_splats(splat_run: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    from plyfile import PlyData

    run_cli(["ns-export", "gaussian-splat", "--load-config", str(splat_run / "config.yml"),
             "--output-dir", str(tmp_path)], user_env, cwd=tmp_path)  # fmt: skip
    vertices = PlyData.read(str(tmp_path / "splat.ply"))["vertex"]
    state = torch.load(splat_run / "nerfstudio_models" / "step-000000031.ckpt", map_location="cpu")["pipeline"]
    means = state["_model.gauss_params.means"].numpy()
    exported = np.stack([vertices["x"], vertices["y"], vertices["z"]], axis=1)
    assert 0 < len(exported) <= len(means)
    # the .ply holds the last step's Gaussians: every exported position is one of the edit's
    nearest = np.abs(exported[:, None, :] - means[None]).max(-1).min(-1)
    assert nearest.max() < 1e-5


def test_ns_render_and_ns_viewer_load_the_edit(splat_run: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    run_cli(["ns-render", "dataset", "--load-config", str(splat_run / "config.yml"), "--output-path",
             str(tmp_path / "frames"), "--split", "train", "--rendered-output-names", "rgb"], user_env, cwd=tmp_path)  # fmt: skip
    assert len(list((tmp_path / "frames" / "train" / "rgb").glob("*.jpg"))) == 8
    output = viewer_output_until_loaded(splat_run / "config.yml", user_env, tmp_path, port=7933)
    assert "Done loading checkpoint" in output, output[-4000:]


@pytest.mark.parametrize("densify", [False, True], ids=["authors: no densification", "--pipeline.scene.edit-densify"])
def test_pds_splat_starts_from_a_splatfacto_scene(
    splat_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path, densify: bool
) -> None:
    # A reconstruction that densifies (as every real one does): the starting checkpoint holds more Gaussians than
    # the scene's 400 seed points, so a splatfacto built for the edit is resized when the checkpoint loads.
    run_cli(["ns-train", "pds-splatfacto", "--data", str(splat_scene), "--output-dir", str(tmp_path), "--timestamp",
             "source", "--max-num-iterations", "20", "--steps-per-save", "20", *SPLAT_OPTIONS,
             "--pipeline.model.warmup-length", "2", "--pipeline.model.refine-every", "4",  # refines at 12 and 16
             "--pipeline.model.densify-grad-thresh", "1e-9"], user_env, cwd=tmp_path)  # fmt: skip
    models = tmp_path / splat_scene.name / "pds-splatfacto" / "source" / "nerfstudio_models"
    source = torch.load(sorted(models.glob("*.ckpt"))[-1], map_location="cpu")["pipeline"]
    assert source["_model.gauss_params.means"].shape[0] > 400
    # Stage 1 runs steps 600-602: splatfacto would densify at 600 (past its warm-up, a multiple of refine_every).
    output = run_cli(["ns-train", "pds-splat", "--data", str(splat_scene), "--output-dir", str(tmp_path),
                      "--timestamp", "edit", "--load-dir", str(models), *SPLAT_OPTIONS,
                      "--pipeline.scene.edit-densify", str(densify), *_edit_args(tiny_prior_dir, (600, 3, 2))],
                     user_env, cwd=tmp_path).stdout  # fmt: skip
    assert "Reconstruction skipped: the edit starts at step 600" in " ".join(output.split())
    edit = tmp_path / splat_scene.name / "pds-splat" / "edit" / "nerfstudio_models"
    first = torch.load(edit / "step-000000602.ckpt", map_location="cpu")["pipeline"]  # the end of stage 1
    same_count = first["_model.gauss_params.means"].shape == source["_model.gauss_params.means"].shape
    assert same_count != densify
    assert not torch.equal(first["_model.gauss_params.features_dc"], source["_model.gauss_params.features_dc"])


def test_a_nerfacto_checkpoint_cannot_start_a_splat_edit(
    splat_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    foreign = tmp_path / "nerfacto.ckpt"
    torch.save({"step": 3, "pipeline": {"_model.field.mlp_base.params": torch.zeros(3)}}, foreign)
    result = waiting.run(
        [console_script("ns-train"), "pds-splat", "--data", str(splat_scene), "--output-dir", str(tmp_path),
         "--load-checkpoint", str(foreign), *SPLAT_OPTIONS, *_edit_args(tiny_prior_dir, (3, 2, 2))], user_env, tmp_path,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "not a splatfacto scene checkpoint" in result.stderr.strip().splitlines()[-1]


def test_an_edit_region_holds_every_gaussian_outside_it(tmp_path: Path) -> None:
    """`--pipeline.scene.hold-outside-region`: after an Adam step of the edit, the Gaussians centred outside the region
    are exactly the source's and those inside moved; without a region (or with the option off) all of them move. The
    Gaussians it trains are written with the region, so a resumed run holds the same ones wherever they moved."""
    from nerfstudio.data.scene_box import SceneBox

    from pds_nerfstudio.edit.region_store import EditRegion, RegionStore
    from pds_nerfstudio.edit.render_store import RenderStore
    from pds_nerfstudio.scenes.splatfacto import PDSSplatfactoModelConfig, SplatfactoSceneConfig

    torch.manual_seed(0)
    points = torch.rand(200, 3) * 2 - 1
    model = PDSSplatfactoModelConfig(sh_degree=1).setup(
        scene_box=SceneBox(torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1,
        seed_points=(points, torch.randint(0, 256, (200, 3), dtype=torch.uint8)),
    )  # fmt: skip
    scene = SplatfactoSceneConfig(hold_outside_region=True).setup(model=model)
    region = lambda p: (p[:, 0] > 0).float()  # noqa: E731  (half of space)
    inside = scene.parts_in(region)
    assert inside is not None and torch.equal(inside, model.gauss_params["means"].detach()[:, 0] > 0)

    def one_edit_step() -> dict[str, torch.Tensor]:
        before = {name: p.detach().clone() for name, p in model.gauss_params.items()}
        optimizer = torch.optim.Adam(model.gauss_params.values(), lr=0.01)
        sum(p.square().sum() + p.sum() for p in model.gauss_params.values()).backward()
        optimizer.step()
        optimizer.zero_grad()
        return {name: (p.detach() - before[name]).flatten(1).abs().amax(1) for name, p in model.gauss_params.items()}

    assert "of 200 Gaussians" in scene.hold_outside(inside)
    for name, moved in one_edit_step().items():
        assert bool((moved[~inside] == 0).all()) and bool((moved[inside] > 0).all()), name
    store = RegionStore(RenderStore([Path("a.png")]))  # what a resumed run reads back: the same Gaussians
    store.write(tmp_path, EditRegion(torch.ones(1, 4, 4), torch.zeros(1, 4, 4, 3), None, inside))
    assert torch.equal(store.read(tmp_path).parts, inside)
    assert scene.hold_outside(None) is None  # every Gaussian trains again
    assert all(bool((moved > 0).all()) for moved in one_edit_step().values())
    scene.config.hold_outside_region = False
    assert scene.parts_in(region) is None
