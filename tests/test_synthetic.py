"""Tests of the synthetic stand-ins: the tiny Stable Diffusion prior and the procedural scenes."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import waiting
import torch
from PIL import Image
from safetensors.torch import load_file

from pds_nerfstudio.synthetic.procedural_scene import PALETTE, SHAPES, make_scene
from pds_nerfstudio.synthetic.tiny_prior import (
    SCHEDULER_CONFIG,
    build_tiny_prior,
    default_prior_dir,
    model_configs,
)

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a red sphere"


def _env(**extra: str) -> dict[str, str]:
    """The current environment with the repository importable, plus ``extra``."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every weight of a pipeline folder, keyed by ``<component>/<name>``."""
    return {
        f"{path.parent.name}/{name}": tensor
        for path in sorted(folder.rglob("*.safetensors"))
        for name, tensor in load_file(path).items()
    }


# ---------------------------------------------------------------- tiny prior


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_prior(tmp_path_factory.mktemp("prior") / "tiny", seed=0)


@pytest.fixture(scope="module")
def pipe(prior_dir: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(prior_dir)


def test_prior_loads_offline_as_pipeline_and_as_components(prior_dir: Path) -> None:
    code = textwrap.dedent(
        f"""
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
        root = {str(prior_dir)!r}
        pipe = StableDiffusionPipeline.from_pretrained(root)
        assert pipe.safety_checker is None and pipe.feature_extractor is None
        UNet2DConditionModel.from_pretrained(root, subfolder="unet")
        AutoencoderKL.from_pretrained(root, subfolder="vae")
        CLIPTextModel.from_pretrained(root, subfolder="text_encoder")
        CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
        DDIMScheduler.from_pretrained(root, subfolder="scheduler")
        print("loaded", type(pipe).__name__)
        """
    )
    env = _env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = waiting.run([sys.executable, "-c", code], env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded StableDiffusionPipeline" in result.stdout


def test_prior_folder_is_small_and_has_no_safety_checker(prior_dir: Path) -> None:
    size = sum(path.stat().st_size for path in prior_dir.rglob("*") if path.is_file())
    assert size < 4e6
    index = json.loads((prior_dir / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False
    assert index["safety_checker"] == [None, None]
    assert (prior_dir / "tokenizer" / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_scheduler_is_sd1_schedule(pipe) -> None:
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    for key, value in SCHEDULER_CONFIG.items():
        assert pipe.scheduler.config[key] == value


def test_vae_downscales_8x_to_4_channels(pipe) -> None:
    with torch.no_grad():
        latents = pipe.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.sample()
    assert latents.shape == (1, 4, 8, 8)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.18215)


def test_tokenizer_knows_prompt_words(pipe) -> None:
    tokenizer = pipe.tokenizer
    assert tokenizer.tokenize(PROMPT) == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "sphere</w>"]
    ids = tokenizer(PROMPT).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and len(ids) == 8
    assert tokenizer.unk_token_id not in ids[1:-1]
    padded = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert tokenizer.model_max_length == 77 and len(padded) == 77
    assert len(tokenizer) <= pipe.text_encoder.config.vocab_size
    for colour_or_shape in [*PALETTE, *SHAPES]:  # every fixture object name is a single token
        assert len(tokenizer.tokenize(colour_or_shape)) == 1


def test_text_encoder_and_unet_shapes(pipe) -> None:
    tokens = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text = pipe.text_encoder(tokens)[0]
        noise = pipe.unet(torch.randn(2, 4, 8, 8), 500, encoder_hidden_states=text.repeat(2, 1, 1)).sample
    assert text.shape == (1, 77, 32)
    assert noise.shape == (2, 4, 8, 8) and torch.isfinite(noise).all()


def test_pipeline_generates_on_cpu(pipe) -> None:
    image = pipe("a red sphere", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_prior_weights_are_deterministic_in_the_seed(prior_dir: Path, tmp_path: Path) -> None:
    state = torch.random.get_rng_state()
    same = _tensors(build_tiny_prior(tmp_path / "same", seed=0))
    other = _tensors(build_tiny_prior(tmp_path / "other", seed=1))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    reference = _tensors(prior_dir)
    assert reference.keys() == same.keys() == other.keys()
    assert all(torch.equal(reference[key], same[key]) for key in reference)
    assert not torch.equal(reference["unet/conv_in.weight"], other["unet/conv_in.weight"])


def test_sd15_configs_are_stable_diffusion_1_5() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = model_configs("sd15")
    assert configs["unet"]["cross_attention_dim"] == 768 and configs["unet"]["sample_size"] == 64
    assert configs["vae"]["scaling_factor"] == 0.18215 and configs["vae"]["sample_size"] == 512
    assert configs["text_encoder"]["vocab_size"] == 49408 and configs["text_encoder"]["hidden_act"] == "quick_gelu"
    with torch.device("meta"):  # shapes only, no memory
        models = {
            "unet": UNet2DConditionModel(**configs["unet"]),
            "vae": AutoencoderKL(**configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        }
    counts = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def test_bad_prior_options_and_non_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="architecture"):
        build_tiny_prior(tmp_path / "a", architecture="sdxl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float16"):
        build_tiny_prior(tmp_path / "b", torch_dtype="int8")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_prior(tmp_path / "c")
    build_tiny_prior(tmp_path / "c", overwrite=True)
    assert (tmp_path / "c" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "c" / "model_index.json").is_file()


def test_default_prior_dir_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = default_prior_dir()
    stamp = (first / "model_index.json").stat().st_mtime_ns
    assert default_prior_dir() == first
    assert (first / "model_index.json").stat().st_mtime_ns == stamp  # not rebuilt
    assert first.parent == tmp_path / "pds_nerfstudio" and first.name.startswith("tiny-prior-")
    assert [path.name for path in first.parent.iterdir()] == [first.name]  # no staging folders left


def test_make_tiny_prior_cli_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    refused = waiting.run([sys.executable, str(REPO / "scripts" / "make_tiny_prior.py"), str(tmp_path)], _env())
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "not empty" in refused.stderr and "--overwrite" in refused.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------- procedural scene


@pytest.fixture(scope="module")
def sphere_scene(tmp_path_factory: pytest.TempPathFactory):
    return make_scene(tmp_path_factory.mktemp("scene") / "sphere")


@pytest.fixture(scope="module")
def trio_scene(tmp_path_factory: pytest.TempPathFactory):
    objects = ("red sphere", "blue cube", "green cylinder")
    return make_scene(tmp_path_factory.mktemp("scene") / "trio", size=48, num_views=8, objects=objects, seed=3)


def _load(info, kind: str) -> list[np.ndarray]:
    paths = {"images": info.image_paths, "masks": info.mask_paths}.get(kind)
    if paths is None:
        return [np.load(path) for path in info.depth_paths]
    return [np.asarray(Image.open(path)) for path in paths]


def _closest_colour(rgb: np.ndarray) -> str:
    """The chromatic palette colour whose direction in RGB space is closest to ``rgb`` (shading-invariant)."""
    chromatic = {name: np.array(value) for name, value in PALETTE.items() if np.ptp(value) > 0.2}
    return max(chromatic, key=lambda name: rgb @ chromatic[name] / np.linalg.norm(chromatic[name]))


def test_scene_files(sphere_scene) -> None:
    root = sphere_scene.out_dir
    meta = json.loads((root / "transforms.json").read_text())
    assert (meta["w"], meta["h"], meta["cx"], meta["cy"]) == (64, 64, 32, 32)
    assert meta["fl_x"] == meta["fl_y"] == pytest.approx(32 / math.tan(math.radians(25)))
    assert [frame["file_path"] for frame in meta["frames"]] == [f"images/frame_{i:05d}.png" for i in range(1, 25)]
    image, mask, depth = (_load(sphere_scene, kind)[0] for kind in ("images", "masks", "depth"))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 64) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert depth.shape == (64, 64) and depth.dtype == np.float32
    assert np.isinf(depth).any() and np.isfinite(depth[mask == 1]).all()  # inf = sky
    scene = json.loads((root / "scene.json").read_text())
    assert scene["objects"][0]["colour"] == "red" and scene["objects"][0]["shape"] == "sphere"
    assert {"centre", "size", "rgb"} <= scene["objects"][0].keys() and scene["camera"]["num_views"] == 24


def test_red_sphere_pixels_are_red(sphere_scene) -> None:
    for image, mask in zip(_load(sphere_scene, "images"), _load(sphere_scene, "masks"), strict=True):
        assert (mask == 1).sum() > 100
        assert _closest_colour(image[mask == 1].mean(axis=0)) == "red"


def test_cameras_follow_nerfstudio_convention(sphere_scene) -> None:
    """Unprojecting each pixel's depth with transforms.json's camera lands on the ground or the sphere."""
    meta = json.loads((sphere_scene.out_dir / "transforms.json").read_text())
    sphere = sphere_scene.objects[0]
    v, u = np.mgrid[0:64, 0:64] + 0.5
    rays = np.stack([(u - meta["cx"]) / meta["fl_x"], -(v - meta["cy"]) / meta["fl_y"], -np.ones_like(u)], -1)
    for frame, depth, mask in zip(
        meta["frames"], _load(sphere_scene, "depth"), _load(sphere_scene, "masks"), strict=True
    ):
        pose = np.array(frame["transform_matrix"])
        hit = np.isfinite(depth)
        points = (rays[hit] * depth[hit, None]) @ pose[:3, :3].T + pose[:3, 3]
        on_sphere = mask[hit] == 1
        assert np.abs(points[~on_sphere, 2]).max() < 1e-3
        radii = np.linalg.norm(points[on_sphere] - np.array(sphere.centre), axis=1)
        assert np.abs(radii - sphere.size).max() < 1e-3


def test_multiple_objects(trio_scene) -> None:
    masks = _load(trio_scene, "masks")
    assert set(np.unique(np.stack(masks))) == {0, 1, 2, 3}
    for i, obj in enumerate(trio_scene.objects, start=1):
        pixels = np.concatenate(
            [image[mask == i] for image, mask in zip(_load(trio_scene, "images"), masks, strict=True)]
        )
        assert _closest_colour(pixels.mean(axis=0)) == obj.colour
    for a in trio_scene.objects:
        for b in trio_scene.objects:
            if a is not b:  # footprints (a cube's corner reaches size * sqrt 2) do not overlap
                assert math.dist(a.centre[:2], b.centre[:2]) > (a.size + b.size) * math.sqrt(2)


def test_view_count_and_size_options(trio_scene) -> None:
    meta = json.loads((trio_scene.out_dir / "transforms.json").read_text())
    assert len(meta["frames"]) == 8 and (meta["w"], meta["h"]) == (48, 48)
    assert {image.shape for image in _load(trio_scene, "images")} == {(48, 48, 3)}


def test_scene_is_deterministic_in_the_seed(sphere_scene, trio_scene, tmp_path: Path) -> None:
    again = make_scene(tmp_path / "again")
    names = ["transforms.json", "scene.json", "images/frame_00007.png", "masks/frame_00007.png"]
    for name in [*names, "depth/frame_00007.npy"]:
        assert (again.out_dir / name).read_bytes() == (sphere_scene.out_dir / name).read_bytes(), name
    moved = make_scene(tmp_path / "moved", size=48, num_views=8, objects=[o.name for o in trio_scene.objects], seed=4)
    assert moved.objects != trio_scene.objects


def test_nerfstudio_dataparser_reads_scene(sphere_scene) -> None:
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    parser = NerfstudioDataParserConfig(data=sphere_scene.out_dir).setup()
    train, test = parser.get_dataparser_outputs("train"), parser.get_dataparser_outputs("test")
    assert len(train.image_filenames) == math.ceil(24 * 0.9) and len(test.image_filenames) == 24 - math.ceil(24 * 0.9)
    assert int(train.cameras.width[0]) == 64 and int(train.cameras.height[0]) == 64
    assert train.cameras.camera_to_worlds[:, :, 3].abs().max() <= 1.0 + 1e-5


@pytest.mark.parametrize(
    "name, bad", [("mauve sphere", "mauve"), ("red blob", "blob"), ("sphere", "'<colour> <shape>'")]
)
def test_bad_object_names(tmp_path: Path, name: str, bad: str) -> None:
    with pytest.raises(ValueError, match=bad) as error:
        make_scene(tmp_path / "bad", objects=[name])
    assert "red, green, blue" in str(error.value) and "sphere, cube, cylinder" in str(error.value)
    assert not (tmp_path / "bad").exists()


def test_make_scene_cli_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    command = [sys.executable, str(REPO / "scripts" / "make_scene.py"), str(tmp_path), "--num-views", "2"]
    refused = waiting.run(command, _env())
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "not empty" in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    written = waiting.run([*command, "--overwrite"], _env())
    assert written.returncode == 0, written.stderr
    assert "wrote 2 views" in written.stdout and (tmp_path / "notes.txt").read_text() == "keep me"
    assert len(list((tmp_path / "images").iterdir())) == 2
