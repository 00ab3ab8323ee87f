"""The toy prior: trained by a real diffusers training loop, saved as Stable Diffusion, loaded like SD 1.5,
and (the embedded copy) knows the attributes of its captions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pds_nerfstudio.synthetic.embedded_prior import EMBEDDED_TOY_PRIOR, embedded_toy_prior_dir
from pds_nerfstudio.synthetic.toy_prior import RECIPE_FILE, ToyPriorRecipe, train_toy_prior
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig

SMOKE_RECIPE = replace(
    ToyPriorRecipe(),
    colours=("red", "blue"),
    shapes=("sphere",),
    layouts_per_caption=1,
    views_per_layout=4,
    vae_steps=2,
    vae_batch_size=4,
    unet_steps=2,
    unet_batch_size=4,
    warmup_steps=1,
)


@pytest.fixture(scope="module")
def smoke_prior(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_toy_prior(tmp_path_factory.mktemp("toy") / "prior", SMOKE_RECIPE, log=lambda _: None)


def test_training_writes_a_stable_diffusion_folder_that_loads_like_sd(smoke_prior: Path, offline_hub) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(smoke_prior, safety_checker=None, requires_safety_checker=False)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(smoke_prior), dtype="fp32", device="cpu"))
    assert prior.native_resolution == 64
    latents = prior.encode(torch.rand(1, 3, 64, 64))
    assert latents.shape == (1, 4, 16, 16)
    summary = json.loads((smoke_prior / RECIPE_FILE).read_text())
    assert summary["captions"] == ["a red sphere", "a blue sphere"]
    assert summary["scaling_factor"] == pytest.approx(prior.vae.config.scaling_factor)


def test_training_is_reproducible_from_its_seed(smoke_prior: Path, tmp_path: Path) -> None:
    again = train_toy_prior(tmp_path / "again", SMOKE_RECIPE, log=lambda _: None)
    for part in ("unet", "vae", "text_encoder"):
        first = load_file(next((smoke_prior / part).glob("*.safetensors")))
        second = load_file(next((again / part).glob("*.safetensors")))
        assert first.keys() == second.keys()
        for name in first:
            torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=f"{part}.{name}")


def test_training_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        train_toy_prior(tmp_path, SMOKE_RECIPE, log=lambda _: None)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_the_embedded_toy_prior_is_small_and_complete() -> None:
    folder = embedded_toy_prior_dir()
    size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    assert size <= 20e6
    summary = json.loads((folder / RECIPE_FILE).read_text())
    assert len(summary["captions"]) == 36 and summary["recipe"]["seed"] == 0


@pytest.mark.parametrize(("true", "wrong"), [("red", "blue"), ("blue", "green"), ("yellow", "purple")])
def test_the_embedded_toy_prior_knows_its_colours(true: str, wrong: str, tmp_path: Path, offline_hub) -> None:
    """Diffusion as a classifier: the right caption predicts a render's noise better than a wrong colour's,
    on average over timesteps 100..700 and noises (fixed seeds: the answer does not depend on the machine)."""
    from pds_nerfstudio.synthetic.procedural_scene import make_scene

    info = make_scene(tmp_path / "scene", size=64, num_views=4, objects=(f"{true} cube",), seed=123)
    prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(EMBEDDED_TOY_PRIOR), dtype="fp32", device="cpu"))
    from PIL import Image
    import numpy as np

    images = torch.stack([
        torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255).permute(2, 0, 1) for p in info.image_paths
    ])  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = prior.encode(images).repeat(8, 1, 1, 1)
        t = torch.linspace(100, 700, len(x0)).long()
        noise = torch.randn(x0.shape, generator=generator)
        abar = prior.alphas_cumprod.float()[t][:, None, None, None]
        noisy = abar.sqrt() * x0 + (1 - abar).sqrt() * noise

        def error(colour: str) -> float:
            context = prior.text_embedding(f"a {colour} cube").expand(len(x0), -1, -1)
            return (prior.unet(noisy, t, context).sample - noise).square().mean().item()

        assert error(true) < error(wrong)
