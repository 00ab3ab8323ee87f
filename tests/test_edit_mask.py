"""DiffEdit's mask from the prior itself (pds_nerfstudio/guidance/edit_mask.py): diffusers' timestep, the map's
formula on a noise predictor whose answer is known, and the toy prior finding the object that an edit names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pds_nerfstudio.guidance.edit_mask import DiffEditSettings, diffedit_maps, diffedit_timestep


def test_the_timestep_is_diffusers_generate_masks() -> None:
    from diffusers import DDIMScheduler

    for strength, steps, offset in ((0.5, 50, 1), (0.3, 20, 0), (1.0, 50, 1), (0.02, 50, 1)):
        scheduler = DDIMScheduler(num_train_timesteps=1000, steps_offset=offset)
        scheduler.set_timesteps(steps)
        start = max(steps - min(int(steps * strength), steps), 0)  # diffusers' get_timesteps
        expected = int(scheduler.timesteps[min(start, steps - 1)])
        settings = DiffEditSettings(encode_strength=strength, num_inference_steps=steps)
        assert diffedit_timestep(settings, 1000, offset) == expected
    assert diffedit_timestep(DiffEditSettings(), 1000, 1) == 481


def test_the_map_is_where_the_captions_predictions_differ() -> None:
    region = torch.zeros(2, 1, 8, 8)
    region[0, :, 2:4, 2:5] = 1.0  # each image has its own region
    region[1, :, 5:8, 0:2] = 1.0
    abar = torch.linspace(0.999, 0.01, 1000)

    def eps(x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return 0.1 * x_t + cond[:, :1, :1, None] * region  # cond 0 (source) or 1 (target) changes eps in the region

    source, target = torch.zeros(2, 77, 4), torch.ones(2, 77, 4)
    maps = diffedit_maps(torch.randn(2, 4, 8, 8), eps, abar, source, target, generator=torch.Generator().manual_seed(0))
    # |difference| is 1 in the region and 0 elsewhere: its mean is the region's share, clamped at 3 times that
    torch.testing.assert_close(maps, region[:, 0])
    assert torch.equal(diffedit_maps(torch.randn(2, 4, 8, 8), eps, abar, source, source), torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="num_maps"):
        DiffEditSettings(num_maps=0)


def test_the_toy_prior_finds_the_object_a_colour_edit_names(tmp_path: Path) -> None:
    from pds_nerfstudio.measure import fidelity_measures as fm
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
    from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir
    from pds_nerfstudio.synthetic.procedural_scene import make_scene
    from pds_nerfstudio.synthetic.toy_prior import caption

    prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(embedded_toy_prior_dir()), dtype="fp32", device="cpu"))
    truth = fm.load_scene_truth(make_scene(tmp_path / "scene", size=64, num_views=6, objects=("red sphere",)).out_dir)
    images = torch.from_numpy(np.stack([v.image for v in truth.views])).permute(0, 3, 1, 2).float()
    count = len(truth.views)
    maps = diffedit_maps(prior.encode(images), prior.eps_fn(7.5), prior.alphas_cumprod,
                         prior.text_embeddings([caption("red", "sphere")] * count),
                         prior.text_embeddings([caption("blue", "sphere")] * count),
                         generator=torch.Generator().manual_seed(0), steps_offset=prior.ddim_settings["steps_offset"])  # fmt: skip
    masks = F.interpolate(maps[:, None], size=64, mode="bilinear", align_corners=False)[:, 0].numpy() > 0.5
    ious = [fm.iou(mask, view.mask) for mask, view in zip(masks, truth.views, strict=True)]
    assert np.mean(ious) > 0.7, ious  # measured 0.84 on 8 views of this layout
    assert np.mean([mask[~view.mask].mean() for mask, view in zip(masks, truth.views)]) < 0.05  # little background
