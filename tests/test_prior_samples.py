"""The prior's own samples of a caption, drawn into a scene's views (the fidelity benchmark's prior check)."""

from __future__ import annotations

from pathlib import Path

import torch

from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
from pds_nerfstudio.guidance.prior_samples import blended_samples


def test_blended_samples_keep_the_source_outside_the_mask_and_sample_inside(tiny_prior_dir: Path, offline_hub) -> None:
    prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(tiny_prior_dir), dtype="fp32", device="cpu"))
    size = prior.native_resolution
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    masks[:, size // 4 : size // 2, size // 4 : size // 2] = True
    source = prior.encode(images)
    cond = prior.text_embeddings(["a blue sphere"] * 2)

    def sample(seed: int) -> torch.Tensor:
        return blended_samples(source, masks, prior.eps_fn(7.5), prior.alphas_cumprod, cond,
                               num_inference_steps=5, generator=torch.Generator().manual_seed(seed))  # fmt: skip

    latents = sample(0)
    cell = size // source.shape[-1]
    inside = torch.nn.functional.max_pool2d(masks[:, None].float(), cell)
    inside = torch.nn.functional.max_pool2d(inside, 3, stride=1, padding=1)[:, 0] > 0  # dilated by one cell
    outside = (~inside)[:, None].expand_as(latents)
    torch.testing.assert_close(latents[outside], source[outside], rtol=0, atol=1e-5)
    assert (latents - source)[~outside].abs().mean() > 0.1  # drawn, not copied
    assert torch.equal(latents, sample(0)) and not torch.equal(latents, sample(1))  # a function of the seed
