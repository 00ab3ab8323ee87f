"""``pds-edit-svg`` on the tiny random prior: an end-to-end edit, its outputs, the recipe's defaults, and bad input
refused in one line with nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

import waiting
from pds_nerfstudio.cli import edit_svg
from pds_nerfstudio.cli.edit_svg import EditSvgConfig, guidance_options, main, step_ratios
from pds_nerfstudio.prior.stable_diffusion import DiffusionPriorConfig
from pds_nerfstudio.svg.parse import load_svg
from test_svg_rasterizer import FIXTURES

pytestmark = pytest.mark.usefixtures("offline_hub")


@pytest.fixture(scope="module")
def icon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "icon.svg"
    path.write_bytes((FIXTURES / "icon.svg").read_bytes())
    return path


def make_config(svg: Path, output_dir: Path, prior_dir: Path, **overrides) -> EditSvgConfig:
    config = EditSvgConfig(svg=svg, source_prompt="a red circle", target_prompt="a blue circle", output_dir=output_dir,
                           steps=2, png_size=64,
                           prior=DiffusionPriorConfig(model_id=str(prior_dir), dtype="fp32", device="cpu"))  # fmt: skip
    return replace(config, **overrides)


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory, icon: Path, tiny_prior_dir: Path) -> EditSvgConfig:
    config = make_config(icon, tmp_path_factory.mktemp("edit") / "out", tiny_prior_dir)
    before = (icon.read_bytes(), icon.stat().st_mtime_ns)
    assert main(config) == config.output_dir / "edited.svg"
    assert (icon.read_bytes(), icon.stat().st_mtime_ns) == before
    return config


def test_edit_writes_svg_png_and_sheet(edited: EditSvgConfig):
    out = edited.output_dir
    scene = load_svg(out / "edited.svg")
    source = load_svg(edited.svg)
    assert scene.num_shapes == source.num_shapes and scene.points.shape == source.points.shape
    assert not torch.equal(scene.points, source.points)  # the points moved
    assert Image.open(out / "edited.png").size == (64, 64)
    assert Image.open(out / "sheet.png").size == (3 * 64, 64)
    assert 'id="heart"' in (out / "edited.svg").read_text()


def test_colours_only_keeps_every_point(tmp_path: Path, icon: Path, tiny_prior_dir: Path):
    config = make_config(icon, tmp_path / "out", tiny_prior_dir, optimise=("colours",), method="sds")
    main(config)
    source, scene = load_svg(icon), load_svg(config.output_dir / "edited.svg")
    assert torch.allclose(scene.points, source.points, atol=1e-3)  # written to 3 decimals


def test_the_edit_calls_the_guidance_code(tmp_path: Path, icon: Path, tiny_prior_dir: Path, monkeypatch):
    from pds_nerfstudio.guidance import options

    calls = []
    real = options.guidance_gradient

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(options, "guidance_gradient", counted)
    main(make_config(icon, tmp_path / "out", tiny_prior_dir, steps=3, method="dds"))
    assert calls == ["dds"] * 3


def test_supplement_defaults():
    config = EditSvgConfig(svg=Path("a.svg"), target_prompt="b", output_dir=Path("out"), source_prompt="a")
    assert (config.guidance_scale, config.steps, config.point_lr, config.colour_lr) == (100.0, 1000, 0.8, 0.01)
    assert config.optimise == ("points", "colours")
    assert step_ratios(config) == (0.1, 0.98)
    assert step_ratios(replace(config, method="sds")) == (0.05, 0.95)
    assert step_ratios(replace(config, method="dds")) == (0.02, 0.98)
    assert step_ratios(replace(config, min_step_ratio=0.3)) == (0.3, 0.98)
    options = guidance_options(config)
    assert options.target_prompt == "b. minimal flat 2d vector image. lineal color. trending on artstation"
    assert options.num_subset_steps == 500 and options.guidance_scale == 100.0
    assert guidance_options(replace(config, prompt_suffix="")).source_prompt == "a"


def test_help_runs():
    completed = waiting.run([sys.executable, "-m", "pds_nerfstudio.cli.edit_svg", "--help"], dict(os.environ))
    assert completed.returncode == 0, completed.stderr
    for option in ("--svg", "--optimise", "--point-lr", "--colour-lr", "--prompt-suffix", "--prior.model-id"):
        assert option in completed.stdout


# ------------------------------------------------------------------ bad input


def _entrypoint(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["pds-edit-svg", *args])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    with pytest.raises(SystemExit) as caught:
        edit_svg.entrypoint()
    return caught.value.code, capsys.readouterr().err


def _svg(body: str) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">{body}</svg>'


GRADIENT = _svg('<defs><radialGradient id="g"><stop offset="0" stop-color="red"/></radialGradient></defs>'
                '<circle id="sun" cx="16" cy="16" r="8" fill="url(#g)"/>')  # fmt: skip


@pytest.mark.parametrize(
    "content, prompts, expected",
    [
        (b"this is not an svg", ("a", "b"), "is not an SVG file"),
        (_svg('<text x="1" y="10">hi</text><image href="x.png" width="3" height="3"/>').encode(), ("a", "b"),
         "it has 1 <image>, 1 <text>, which are not supported"),
        (_svg("").encode(), ("a", "b"), "no shapes to edit"),
        (GRADIENT.encode(), ("a", "b"), "<circle id='sun'> has a gradient or pattern fill"),
        (_svg('<circle cx="5" cy="5" r="3"/>').encode(), ("a", " "), "target prompt is empty: set --target-prompt"),
        (_svg('<circle cx="5" cy="5" r="3"/>').encode(), ("", "b"), "source prompt is empty: set --source-prompt"),
        (None, ("a", "b"), "no such file"),
    ],
    ids=["not-svg", "text-and-image", "empty", "gradient", "empty-target", "empty-source", "missing"],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch, capsys, content, prompts, expected):
    svg = tmp_path / "in.svg"
    if content is not None:
        svg.write_bytes(content)
        os.utime(svg, ns=(1_000_000_000, 1_000_000_000))
    out = tmp_path / "out"
    status, err = _entrypoint(["--svg", str(svg), "--source-prompt", prompts[0], "--target-prompt", prompts[1],
                               "--output-dir", str(out), "--prior.model-id", str(tmp_path / "no-prior-needed")],
                              monkeypatch, capsys)  # fmt: skip
    assert status == 2
    assert err.startswith("pds-edit-svg: error: ") and err.strip().count("\n") == 0, err
    assert expected in err and "Traceback" not in err
    assert not out.exists()
    if content is not None:
        assert svg.read_bytes() == content and svg.stat().st_mtime_ns == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.svg"] if content is not None else [])


def test_output_over_the_input_is_refused(tmp_path: Path, monkeypatch, capsys):
    svg = tmp_path / "edited.svg"
    svg.write_text(_svg('<circle cx="5" cy="5" r="3"/>'))
    status, err = _entrypoint(["--svg", str(svg), "--source-prompt", "a", "--target-prompt", "b", "--output-dir",
                               str(tmp_path), "--overwrite"], monkeypatch, capsys)  # fmt: skip
    assert status == 2 and "over the input --svg" in err


def test_existing_outputs_need_overwrite(edited: EditSvgConfig, monkeypatch, capsys):
    before = (edited.output_dir / "edited.svg").read_bytes()
    status, err = _entrypoint(["--svg", str(edited.svg), "--source-prompt", "a", "--target-prompt", "b",
                               "--output-dir", str(edited.output_dir)], monkeypatch, capsys)  # fmt: skip
    assert status == 2 and "--overwrite" in err
    assert (edited.output_dir / "edited.svg").read_bytes() == before


def test_prior_load_error_is_one_line_and_writes_nothing(tmp_path: Path, icon: Path, monkeypatch, capsys):
    out = tmp_path / "out"
    status, err = _entrypoint(["--svg", str(icon), "--source-prompt", "a", "--target-prompt", "b", "--output-dir",
                               str(out), "--prior.model-id", str(tmp_path / "nope"), "--prior.device", "cpu"],
                              monkeypatch, capsys)  # fmt: skip
    assert status == 1 and err.startswith("pds-edit-svg: error: cannot load the diffusion prior")
    assert not out.exists()


@pytest.mark.parametrize("args, option", [(["--steps", "-1"], "--steps"), (["--point-lr", "0"], "--point-lr"),
                                          (["--optimise"], "--optimise"), (["--guidance-scale", "0"], "--guidance-scale"),
                                          (["--min-step-ratio", "0.9", "--max-step-ratio", "0.5"], "--min-step-ratio")])  # fmt: skip
def test_bad_options_are_one_line(tmp_path: Path, icon: Path, monkeypatch, capsys, args, option):
    status, err = _entrypoint(["--svg", str(icon), "--source-prompt", "a", "--target-prompt", "b", "--output-dir",
                               str(tmp_path / "out"), *args], monkeypatch, capsys)  # fmt: skip
    assert status == 2 and option in err and err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()
