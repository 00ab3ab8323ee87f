"""`pds-personalize`: a LoRA of the toy prior learns a scene's images under its instance prompt, and the edit
(`ns-train pds`, `pds-edit-image`) loads it; bad LoRA folders and options are refused before anything heavy."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import waiting
from conftest import console_script, folder_snapshot, run_cli
from test_ns_commands import TINY_NERFACTO, pds_args

from pds_nerfstudio import compat
from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir

compat.allow_nerfstudio_checkpoints()
INSTANCE, CLASS = "a sks red sphere", "a red sphere"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pds_nerfstudio.synthetic.procedural_scene import make_scene

    return make_scene(tmp_path_factory.mktemp("lora") / "scene", size=64, num_views=8, objects=("red sphere",)).out_dir


@pytest.fixture(scope="module")
def lora(scene: Path, user_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    before = folder_snapshot(scene)
    out = tmp_path_factory.mktemp("lora_out") / "lora"
    output = run_cli(["pds-personalize", "--data", str(scene), "--instance-prompt", INSTANCE, "--output", str(out),
                      "--prior.model-id", str(embedded_toy_prior_dir()), "--steps", "120", "--learning-rate", "1e-3",
                      "--class-prompt", CLASS, "--num-class-images", "2"], user_env, cwd=out.parent).stdout  # fmt: skip
    assert "pytorch_lora_weights.safetensors" in output and folder_snapshot(scene) == before  # the scene is only read
    return out


def test_the_lora_lowers_the_denoising_loss_on_the_scene_under_its_instance_prompt(scene: Path, lora: Path) -> None:
    from pds_nerfstudio.cli.personalize import encode, scene_images
    from pds_nerfstudio.prior.dreambooth import held_denoising_loss
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig

    info = json.loads((lora / "pds_lora.json").read_text())
    # nerfstudio's split of 8 views trains on ceil(0.9 * 8) = 8 of them
    assert info["instance_prompt"] == INSTANCE and info["class_prompt"] == CLASS and info["images"] == 8
    assert info["base_model"] == str(embedded_toy_prior_dir().resolve())
    assert len(list((lora / "class_images").glob("*.png"))) == 2
    assert (lora / "pytorch_lora_weights.safetensors").stat().st_size < 2e6  # megabytes, not a model copy
    images = scene_images(scene)
    losses = []
    for adapter in (None, str(lora)):
        prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(embedded_toy_prior_dir()), dtype="fp32", device="cpu",
                                                    lora=adapter))  # fmt: skip
        prior.load()
        losses.append(held_denoising_loss(prior, encode(prior, images, prior.native_resolution), INSTANCE))
    assert losses[1] < 0.9 * losses[0], losses


def test_the_edit_runs_with_the_lora_and_keeps_it_out_of_its_checkpoints(
    scene: Path, lora: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    args = ["ns-train", "pds", "--data", str(scene), "--output-dir", str(tmp_path), "--timestamp", "run",
            *TINY_NERFACTO, *pds_args(embedded_toy_prior_dir(), 2, 2, 1), "--pipeline.prior.lora", str(lora),
            "--pipeline.source-prompt", INSTANCE, "--pipeline.target-prompt", "a sks blue sphere"]  # fmt: skip
    run_cli(args, user_env, cwd=tmp_path)
    state = torch.load(sorted((tmp_path / scene.name / "pds" / "run" / "nerfstudio_models").glob("*.ckpt"))[-1],
                       map_location="cpu")  # fmt: skip
    assert state["step"] == 4 and not [key for key in state["pipeline"] if "lora" in key or "unet" in key]

    image = run_cli(["pds-edit-image", "--image", str(next((scene / "images").glob("*.png"))), "--source-prompt",
                     INSTANCE, "--target-prompt", "a sks blue sphere", "--output-dir", str(tmp_path / "image"),
                     "--prior.model-id", str(embedded_toy_prior_dir()), "--prior.dtype", "fp32", "--prior.lora",
                     str(lora), "--steps", "3"], user_env, cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "image" / "result.png").is_file(), image.stdout


def _ns_train(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return waiting.run([console_script("ns-train"), *args], env, cwd)


def test_a_missing_or_foreign_lora_is_refused_before_anything_loads(
    scene: Path, lora: Path, tiny_prior_dir: Path, user_env: dict[str, str], tmp_path: Path
) -> None:
    base = ["pds", "--data", str(scene), "--output-dir", str(tmp_path), *TINY_NERFACTO, *pds_args(tiny_prior_dir, 2, 2, 1)]
    missing = _ns_train([*base, "--timestamp", "a", "--pipeline.prior.lora", str(tmp_path / "nowhere")], user_env, tmp_path)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "not a LoRA folder of pds-personalize" in missing.stderr.strip().splitlines()[-1]
    foreign = _ns_train([*base, "--timestamp", "b", "--pipeline.prior.lora", str(lora)], user_env, tmp_path)  # toy's LoRA
    message = foreign.stderr.strip().splitlines()[-1]
    assert foreign.returncode != 0 and "was trained on" in message and str(tiny_prior_dir) in message
    assert not (tmp_path / scene.name).exists()  # refused before a run folder was written


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--instance-prompt": " "}, "--instance-prompt is empty"),
        ({"--steps": "0"}, "--steps must be >= 1"),
        ({"--data": "/no/such/scene"}, "/no/such/scene"),
        ({"--output": "OCCUPIED"}, "is not empty"),
    ],
)
def test_pds_personalize_refuses_bad_input_in_one_line(
    scene: Path, user_env: dict[str, str], tmp_path: Path, change: dict, message: str
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "mine.txt").write_text("keep")
    options = {"--data": str(scene), "--instance-prompt": INSTANCE, "--output": str(tmp_path / "out"),
               "--prior.model-id": str(embedded_toy_prior_dir())}  # fmt: skip
    options.update({key: str(occupied) if value == "OCCUPIED" else value for key, value in change.items()})
    result = waiting.run([console_script("pds-personalize"), *[x for item in options.items() for x in item]],
                         user_env, tmp_path)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("pds-personalize: error:") and message in result.stderr
    assert (occupied / "mine.txt").read_text() == "keep" and not (tmp_path / "out").exists()
