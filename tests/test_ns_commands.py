"""nerfstudio's own commands on checkpoints written with torch 2.14, as a new offline user runs them.

One tiny `ns-train pds-nerfacto` run is shared by the module; every other command loads its
checkpoint. No environment variable is set by hand beyond what a fresh machine has (see
conftest.user_env: empty caches, no ffmpeg on PATH, hub offline).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import folder_snapshot, run_cli, samples_at, viewer_output_until_loaded

from pds_nerfstudio import compat

compat.allow_nerfstudio_checkpoints()  # this process reads the checkpoints too

TINY_NERFACTO = [
    "--pipeline.datamanager.train-num-rays-per-batch", "256",
    "--pipeline.datamanager.eval-num-rays-per-batch", "256",
    "--pipeline.model.eval-num-rays-per-chunk", "1024",
    "--pipeline.model.num-nerf-samples-per-ray", "16",
    "--pipeline.model.num-proposal-samples-per-ray", "16", "8",
    "--pipeline.model.hidden-dim", "16",
    "--pipeline.model.hidden-dim-color", "16",
    "--pipeline.model.num-levels", "4",
    "--pipeline.model.log2-hashmap-size", "12",
    "--steps-per-eval-batch", "1000", "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "100000",
    "--vis", "tensorboard",
]  # fmt: skip


def train(method: str, scene: Path, out: Path, steps: int, env: dict[str, str], *extra: str) -> Path:
    """Runs ns-train and returns the run's config.yml."""
    run_cli(
        ["ns-train", method, "--data", str(scene), "--output-dir", str(out), "--timestamp", "run",
         "--max-num-iterations", str(steps), "--steps-per-save", "3", *TINY_NERFACTO, *extra],
        env, cwd=out,
    )  # fmt: skip
    config = out / scene.name / method / "run" / "config.yml"
    assert config.exists(), f"no config at {config}"
    return config


@pytest.fixture(scope="module")
def trained(tiny_scene: Path, user_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ns_run")
    return train("pds-nerfacto", tiny_scene, out, 4, user_env)


def test_ns_train_help_lists_our_method_beside_stock_nerfacto(user_env: dict[str, str], tmp_path: Path) -> None:
    text = run_cli(["ns-train", "--help"], user_env, cwd=tmp_path).stdout
    assert "pds-nerfacto" in text
    assert "nerfacto" in text.replace("pds-nerfacto", "")


def test_installing_the_plugin_leaves_stock_nerfacto_unchanged() -> None:
    from nerfstudio.configs.method_configs import all_methods
    from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig

    stock = all_methods["nerfacto"]
    assert stock.method_name == "nerfacto"
    assert type(stock.pipeline.model) is NerfactoModelConfig
    assert stock.pipeline.model._target is NerfactoModel
    assert all_methods["pds-nerfacto"].method_name == "pds-nerfacto"


def test_checkpoint_renders_frames_and_video(trained: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    run_cli(["ns-render", "dataset", "--load-config", str(trained), "--output-path", str(tmp_path / "frames"),
             "--split", "train", "--rendered-output-names", "rgb"], user_env, cwd=tmp_path)  # fmt: skip
    frames = sorted((tmp_path / "frames" / "train" / "rgb").glob("*.jpg"))
    assert len(frames) == 11
    # A video needs ffmpeg, which the user does not have: our plugin puts imageio-ffmpeg's on PATH.
    run_cli(["ns-render", "interpolate", "--load-config", str(trained), "--output-path", str(tmp_path / "edit.mp4"),
             "--pose-source", "train", "--interpolation-steps", "2", "--frame-rate", "4"], user_env, cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "edit.mp4").stat().st_size > 0


def test_load_dir_resumes_training(trained: Path, tiny_scene: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    models = trained.parent / "nerfstudio_models"
    config = train("pds-nerfacto", tiny_scene, tmp_path, 6, user_env, "--load-dir", str(models))
    resumed = sorted((config.parent / "nerfstudio_models").glob("*.ckpt"))
    assert resumed, "the resumed run saved no checkpoint"
    # nerfstudio 1.1.5 continues at the loaded step + 1 and runs --max-num-iterations more steps.
    loaded_step = torch.load(sorted(models.glob("*.ckpt"))[-1], map_location="cpu")["step"]
    assert torch.load(resumed[-1], map_location="cpu")["step"] == loaded_step + 6


def test_ns_eval_and_ns_export_load_the_checkpoint(trained: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    run_cli(["ns-eval", "--load-config", str(trained), "--output-path", str(tmp_path / "eval.json")], user_env, tmp_path)
    assert "psnr" in (tmp_path / "eval.json").read_text()
    run_cli(["ns-export", "pointcloud", "--load-config", str(trained), "--output-dir", str(tmp_path / "export"),
             "--num-points", "100", "--remove-outliers", "False", "--normal-method", "open3d"], user_env, tmp_path)  # fmt: skip
    assert (tmp_path / "export" / "point_cloud.ply").exists()


def test_ns_viewer_loads_the_checkpoint(trained: Path, user_env: dict[str, str], tmp_path: Path) -> None:
    output = viewer_output_until_loaded(trained, user_env, tmp_path, port=7931)
    assert "Done loading checkpoint" in output, output[-4000:]


def test_stock_nerfacto_checkpoint_renders_and_starts_an_edit_once_plugin_is_installed(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    # Stock nerfacto downloads AlexNet for LPIPS at start-up; give it a local (random) copy, as a
    # user with a populated torch cache has. Its checkpoint is then loaded by our environment.
    env = {**user_env, "TORCH_HOME": str(tmp_path / "torch")}
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "torch/hub/checkpoints/alexnet-owt-7be5be79.pth")
    config = train("nerfacto", tiny_scene, tmp_path, 4, env, "--machine.device-type", "cpu", "--mixed-precision", "False")
    run_cli(["ns-render", "dataset", "--load-config", str(config), "--output-path", str(tmp_path / "frames"),
             "--split", "test", "--rendered-output-names", "rgb"], env, cwd=tmp_path)  # fmt: skip
    assert list((tmp_path / "frames").rglob("*.jpg"))

    # The same stock checkpoint starts an edit: weights load (its LPIPS weights and optimiser state are ignored).
    # It has one appearance code per view, which our methods do not train: the edit keeps the embedding, starts
    # every view from the codes' average and freezes it; the camera poses stay as the reconstruction left them.
    stock = torch.load(sorted((config.parent / "nerfstudio_models").glob("*.ckpt"))[-1], map_location="cpu")["pipeline"]
    codes, poses = "_model.field.embedding_appearance.embedding.weight", "_model.camera_optimizer.pose_adjustment"
    assert stock[codes].shape[1] == 32 and stock[codes].std(dim=0).min() > 0
    (tmp_path / "edit").mkdir()
    edit = train("pds", tiny_scene, tmp_path / "edit", 0, user_env, *pds_args(tiny_prior_dir, 500, 2, 2),
                 "--load-dir", str(config.parent / "nerfstudio_models"))  # fmt: skip
    edited = torch.load(sorted((edit.parent / "nerfstudio_models").glob("*.ckpt"))[-1], map_location="cpu")
    assert edited["step"] == 503
    average = stock[codes].mean(dim=0, keepdim=True).expand_as(stock[codes])
    torch.testing.assert_close(edited["pipeline"][codes], average, rtol=0, atol=1e-6)
    assert torch.equal(edited["pipeline"][poses], stock[poses])
    assert "use_appearance_embedding: true" in edit.read_text()  # ns-render builds the same model
    run_cli(["ns-render", "dataset", "--load-config", str(edit), "--output-path", str(tmp_path / "edited"),
             "--split", "test", "--rendered-output-names", "rgb"], user_env, cwd=tmp_path)  # fmt: skip
    assert list((tmp_path / "edited").rglob("*.jpg"))


def pds_args(prior: Path, reconstruction: int, pds: int, refinement: int) -> list[str]:
    return [
        "--pipeline.source-prompt", "a red sphere", "--pipeline.target-prompt", "a blue sphere",
        "--pipeline.prior.model-id", str(prior), "--pipeline.prior.dtype", "fp32",
        "--pipeline.reconstruction-iterations", str(reconstruction), "--pipeline.pds-iterations", str(pds),
        "--pipeline.refinement-iterations", str(refinement), "--pipeline.log-every", "2",
    ]  # fmt: skip


def test_ns_train_pds_runs_every_stage_and_its_run_renders_without_the_prior(
    trained: Path, tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    prior = tmp_path / "prior"
    shutil.copytree(tiny_prior_dir, prior)
    scene_before = folder_snapshot(tiny_scene)
    config = train("pds", tiny_scene, tmp_path, 0, user_env, *pds_args(prior, 3, 3, 12))
    assert folder_snapshot(tiny_scene) == scene_before, "the scene folder was written"

    run = config.parent
    checkpoints = sorted((run / "nerfstudio_models").glob("*.ckpt"))
    assert torch.load(checkpoints[-1], map_location="cpu")["step"] == 17  # 3 + 3 + 12 steps, whatever --max-num-iterations says
    steps = {int(p.stem.split("-")[1]) for p in checkpoints}
    assert {2, 5, 17} <= steps  # the end of every stage stays loadable
    for stage in ("reconstruction", "pds", "refinement"):
        assert len(list((run / "renders" / stage).glob("*.png"))) == 11, stage
    logs = sorted(p.name for p in (run / "logs").glob("*.png"))  # stage-1 steps 3 and 5, named by their view
    assert [name.split("_")[0] for name in logs] == ["step-000000003", "step-000000005"]
    assert all(Path(name.split("_", 1)[1]).stem.startswith("frame_") for name in logs)
    # A checkpoint holds the scene, not the prior: about the size of the same nerfacto's.
    reference = sorted((trained.parent / "nerfstudio_models").glob("*.ckpt"))[-1]
    assert checkpoints[-1].stat().st_size < 1.05 * reference.stat().st_size

    shutil.rmtree(prior)  # rendering must not need the diffusion prior
    run_cli(["ns-render", "dataset", "--load-config", str(config), "--output-path", str(tmp_path / "frames"),
             "--split", "train", "--rendered-output-names", "rgb"], user_env, cwd=tmp_path)  # fmt: skip
    assert len(list((tmp_path / "frames" / "train" / "rgb").glob("*.jpg"))) == 11


def test_ns_train_pds_starts_from_a_nerfacto_checkpoint_without_reconstructing(
    trained: Path, tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    models = trained.parent / "nerfstudio_models"
    args = [*pds_args(tiny_prior_dir, 1000, 2, 0), "--load-dir", str(models)]
    config = train("pds", tiny_scene, tmp_path, 0, user_env, *args)
    run = config.parent
    assert torch.load(sorted((run / "nerfstudio_models").glob("*.ckpt"))[-1], map_location="cpu")["step"] == 1001
    assert not (run / "renders" / "reconstruction").exists()
    assert len(list((run / "renders" / "pds").glob("*.png"))) == 11


def test_a_held_nerf_edit_in_a_box_renders_the_source_outside_it(
    tiny_scene: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    """`ns-train pds --pipeline.edit-region box --pipeline.scene.hold-outside-region True`: the checkpoint keeps the
    reconstruction's field, and the run as `ns-render` loads it (nerfstudio's eval_setup) renders that field at every
    point outside the box, the edited field inside."""
    from nerfstudio.field_components.field_heads import FieldHeadNames
    from nerfstudio.utils.eval_utils import eval_setup

    box = ["--pipeline.edit-region", "box", "--pipeline.edit-region-obb-center", "0", "0", "0",
           "--pipeline.edit-region-obb-scale", "0.6", "0.6", "0.6", "--pipeline.scene.hold-outside-region", "True"]  # fmt: skip
    result_config = train("pds", tiny_scene, tmp_path, 0, user_env, *pds_args(tiny_prior_dir, 3, 3, 12), *box)
    run = result_config.parent
    source = torch.load(run / "nerfstudio_models" / "step-000000002.ckpt", map_location="cpu")["pipeline"]
    _, pipeline, _, _ = eval_setup(result_config, test_mode="inference")
    model = pipeline.model.cpu()
    kept = model.source_hold.field.state_dict()
    assert all(torch.equal(kept[key], source[f"_model.field.{key}"]) for key in kept)  # the reconstruction's field
    assert any(not torch.equal(value, source[f"_model.field.{key}"]) for key, value in model.field.state_dict().items())
    torch.manual_seed(0)
    points = torch.rand(3000, 3) * 2 - 1
    outside = (points.abs() - 0.3).clamp_min(0).norm(dim=-1) > 0.15  # clear of the box's soft edge
    inside = (points.abs() < 0.2).all(-1)
    with torch.no_grad():
        rendered = model.field.forward(samples_at(points))
        original = model.source_hold.field.forward(samples_at(points))
    for head in (FieldHeadNames.DENSITY, FieldHeadNames.RGB):
        assert torch.equal(rendered[head][outside], original[head][outside]), head
    assert (rendered[FieldHeadNames.RGB][inside] - original[FieldHeadNames.RGB][inside]).abs().amax() > 1e-4
