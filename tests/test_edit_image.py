"""``pds-edit-image`` on the tiny random prior: an end-to-end edit, image loading, clean errors."""

from __future__ import annotations

import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import waiting
import torch
from PIL import Image

from pds_nerfstudio.cli import edit_image
from pds_nerfstudio.cli.edit_image import (
    EditImageConfig,
    UsageError,
    fit_image,
    load_image,
    main,
    validate_config,
)
from pds_nerfstudio.prior.stable_diffusion import DiffusionPriorConfig

COMMAND = str(Path(sys.executable).parent / "pds-edit-image")


pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture(scope="module")
def prior_dir(tiny_prior_dir: Path) -> Path:
    return tiny_prior_dir


@pytest.fixture(scope="module")
def input_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("input") / "in.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def make_config(image: Path, output_dir: Path, prior_dir: Path, **overrides) -> EditImageConfig:
    config = EditImageConfig(
        image=image,
        source_prompt="a photo of a red sphere",
        target_prompt="a photo of a blue cube",
        output_dir=output_dir,
        steps=3,
        sdedit_steps=1,
        prior=DiffusionPriorConfig(model_id=str(prior_dir), dtype="fp32", device="cpu"),
    )
    return replace(config, **overrides)


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory, input_png: Path, prior_dir: Path) -> EditImageConfig:
    """One in-process edit; returns its config."""
    config = make_config(input_png, tmp_path_factory.mktemp("edit") / "out", prior_dir)
    assert main(config) == config.output_dir / "result.png"
    return config


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return waiting.run([COMMAND, *args], env)


# ---------------------------------------------------------------- end to end


def test_edit_writes_result_and_side_by_side(edited: EditImageConfig, input_png: Path):
    result = Image.open(edited.output_dir / "result.png")
    side_by_side = Image.open(edited.output_dir / "side_by_side.png")
    assert result.size == (64, 64) and result.mode == "RGB"
    assert side_by_side.size == (128, 64)
    left, right = np.asarray(side_by_side)[:, :64], np.asarray(side_by_side)[:, 64:]
    assert np.array_equal(left, np.asarray(Image.open(input_png)))  # 64x64 input: no resize
    assert np.array_equal(right, np.asarray(result))


def test_second_run_refuses_to_overwrite(edited: EditImageConfig, user_env: dict[str, str]):
    before = (edited.output_dir / "result.png").read_bytes()
    args = ["--image", str(edited.image), "--source-prompt", "a", "--target-prompt", "b",
            "--output-dir", str(edited.output_dir)]
    completed = run(args, user_env)
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0
    assert "--overwrite" in completed.stderr and "Traceback" not in completed.stderr
    assert (edited.output_dir / "result.png").read_bytes() == before


def test_overwrite_replaces_results(edited: EditImageConfig):
    assert main(replace(edited, overwrite=True, steps=1, sdedit_steps=0, method="sds")).is_file()


def test_help(user_env: dict[str, str]):
    completed = run(["--help"], user_env)
    assert completed.returncode == 0, completed.stderr
    for option in ("--image", "--target-prompt", "--method", "--sdedit-steps", "--prior.model-id", "--lr"):
        assert option in completed.stdout


def test_missing_image_is_a_clean_error(tmp_path: Path, user_env: dict[str, str]):
    completed = run(["--image", str(tmp_path / "missing.png"), "--source-prompt", "a", "--target-prompt", "b",
                     "--output-dir", str(tmp_path / "out")], user_env)
    assert completed.returncode == 2
    assert "no such file" in completed.stderr and "Traceback" not in completed.stderr
    assert completed.stderr.strip().count("\n") == 0


def _entrypoint(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["pds-edit-image", *args])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # the CLI sets its own; restore after
    with pytest.raises(SystemExit) as caught:
        edit_image.entrypoint()
    return caught.value.code, capsys.readouterr().err


def test_prior_load_error_is_one_line(tmp_path: Path, input_png: Path, monkeypatch, capsys):
    status, err = _entrypoint(["--image", str(input_png), "--source-prompt", "a", "--target-prompt", "b",
                               "--output-dir", str(tmp_path / "out"), "--prior.model-id", str(tmp_path / "nope"),
                               "--prior.device", "cpu", "--prior.dtype", "fp32"], monkeypatch, capsys)
    assert status == 1
    assert err.startswith("pds-edit-image: error: cannot load the diffusion prior")
    assert "--prior.model-id" in err and "HF_HUB_OFFLINE" in err and err.strip().count("\n") == 0


def test_unreadable_image_is_one_line(tmp_path: Path, monkeypatch, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    status, err = _entrypoint(["--image", str(bad), "--source-prompt", "a", "--target-prompt", "b",
                               "--output-dir", str(tmp_path / "out")], monkeypatch, capsys)
    assert status == 2 and "cannot read it as an image" in err and err.strip().count("\n") == 0


def test_output_dir_that_is_a_file_is_refused(tmp_path: Path, input_png: Path):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    with pytest.raises(UsageError, match="--output-dir"):
        main(make_config(input_png, blocker / "out", tmp_path / "no-prior-needed"))


@pytest.mark.parametrize(
    "overrides, option",
    [
        ({"target_prompt": " "}, "--target-prompt"),
        ({"source_prompt": ""}, "--source-prompt"),
        ({"guidance_scale": 0.0}, "--guidance-scale"),
        ({"sdedit_guidance_scale": -1.0}, "--sdedit-guidance-scale"),
        ({"lr": 0.0}, "--lr"),
        ({"steps": -1}, "--steps"),
        ({"sdedit_steps": 21}, "--sdedit-steps"),
        ({"min_step_ratio": 0.9, "max_step_ratio": 0.5}, "--min-step-ratio"),
        ({"resolution": 4}, "--resolution"),
    ],
)
def test_bad_options_refused_before_loading(tmp_path: Path, input_png: Path, overrides: dict, option: str):
    config = make_config(input_png, tmp_path / "out", tmp_path / "no-prior-needed", **overrides)
    with pytest.raises(UsageError, match=option):
        validate_config(config)


def test_sds_needs_no_source_prompt(tmp_path: Path, input_png: Path):
    validate_config(make_config(input_png, tmp_path / "out", tmp_path, method="sds", source_prompt=""))


# --------------------------------------------------------------------- images


def test_load_image_modes(tmp_path: Path):
    def saved(array: np.ndarray, mode: str | None = None, **info) -> Path:
        path = tmp_path / f"{len(list(tmp_path.iterdir()))}.png"
        Image.fromarray(array, mode).save(path, **info)
        return path

    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, :3, 3] = 255  # left half opaque red, right half transparent -> white
    image = load_image(saved(rgba))
    assert image.shape == (3, 4, 6) and image.dtype == torch.float32
    assert torch.allclose(image[:, :, :3], torch.tensor([1.0, 0, 0]).view(3, 1, 1).expand(3, 4, 3))
    assert torch.allclose(image[:, :, 3:], torch.ones(3, 4, 3))

    gray = load_image(saved(np.full((5, 5), 128, np.uint8)))
    assert gray.shape == (3, 5, 5) and torch.allclose(gray, torch.full((3, 5, 5), 128 / 255))

    sixteen = load_image(saved(np.full((5, 5), 65535 // 4, np.uint16)))  # read as a scene's images are: / 257
    assert torch.allclose(sixteen, torch.full((3, 5, 5), round((65535 // 4) / 257) / 255), atol=1e-6)
    dark = load_image(saved(np.full((5, 5), 200, np.uint16)))  # 16-bit, though every value is below 256
    assert torch.allclose(dark, torch.full((3, 5, 5), 1 / 255), atol=1e-6)

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([200, 100, 50, 0, 0, 0])
    palette_path = tmp_path / "palette.png"
    palette.save(palette_path, transparency=1)  # index 1 transparent -> white
    expected = torch.tensor([[200 / 255, 1.0], [100 / 255, 1.0], [50 / 255, 1.0]]).view(3, 1, 2)
    assert torch.allclose(load_image(palette_path), expected, atol=1e-6)


def test_fit_image_resizes_short_side_and_crops_to_multiple_of_8():
    image = torch.rand(3, 50, 90)
    fitted = fit_image(image, 64, 8)
    assert fitted.shape == (3, 64, 112)  # 90 * 64 / 50 = 115.2 -> 115 -> cropped to 112
    assert fit_image(torch.rand(3, 64, 64), 64, 8).shape == (3, 64, 64)
    same = torch.rand(3, 64, 64)
    assert torch.equal(fit_image(same, 64, 8), same)
