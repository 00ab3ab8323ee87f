"""Where an edit should happen, estimated from the prior itself: DiffEdit's mask (Couairon et al. 2023).

The prior predicts the noise of a noised image twice, once under the source caption and once under the target
caption. Where the two predictions differ is where the captions disagree about the image: the region to edit.
With diffusers' settings (``StableDiffusionDiffEditPipeline.generate_mask``): the latents are noised to the
timestep that a strength of 0.5 of 50 DDIM steps starts from (481 of 1000 for SD), with ``num_maps`` noises; the
map is |eps_target - eps_source| (each guided at ``guidance_scale``), averaged over latent channels and noises;
it is clamped at ``thresholding_ratio`` times its mean and divided by that, so it lies in [0, 1]; the mask is
where it exceeds 0.5. One difference from diffusers: the clamp is each image's own mean, not the batch's, so a
batch of views gives the masks that each view alone would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .gradients import EpsFn
from .sdedit import ddim_timesteps


@dataclass(frozen=True)
class DiffEditSettings:
    """DiffEdit's mask settings; the defaults are diffusers' (``generate_mask``)."""

    num_maps: int = 10
    """Noises per image whose difference maps are averaged."""
    encode_strength: float = 0.5
    """Fraction of the DDIM schedule that the latents are noised into."""
    thresholding_ratio: float = 3.0
    """The map is clamped at this multiple of its mean before it is divided by that clamp."""
    guidance_scale: float = 7.5
    """Classifier-free guidance of both noise predictions."""
    num_inference_steps: int = 50
    """DDIM steps of the schedule whose timestep ``encode_strength`` picks."""

    def __post_init__(self) -> None:
        if self.num_maps < 1 or not 0 < self.encode_strength <= 1 or self.thresholding_ratio <= 0:
            raise ValueError("DiffEdit needs num_maps >= 1, encode_strength in (0, 1] and thresholding_ratio > 0")


def diffedit_timestep(settings: DiffEditSettings, num_train_timesteps: int, steps_offset: int = 0) -> int:
    """The timestep DiffEdit noises to: diffusers' ``get_timesteps(N, strength)[0]`` of a DDIM schedule of N steps,
    i.e. the (N - int(N strength))-th of its descending timesteps (481 for SD 1.x: N = 50, strength 0.5, offset 1)."""
    descending = ddim_timesteps(num_train_timesteps, settings.num_inference_steps, steps_offset).flip(0)
    start = settings.num_inference_steps - min(int(settings.num_inference_steps * settings.encode_strength),
                                               settings.num_inference_steps)  # fmt: skip
    return int(descending[min(start, settings.num_inference_steps - 1)])


@torch.no_grad()
def diffedit_maps(
    latents: Float[Tensor, "batch 4 h w"],
    eps_fn: EpsFn,
    alphas_cumprod: Float[Tensor, "num_train_timesteps"],
    source_cond: Float[Tensor, "batch 77 dim"],
    target_cond: Float[Tensor, "batch 77 dim"],
    settings: DiffEditSettings = DiffEditSettings(),
    generator: torch.Generator | None = None,
    steps_offset: int = 0,
) -> Float[Tensor, "batch h w"]:
    """DiffEdit's soft map in [0, 1] at latent resolution (the mask is ``map > 0.5``); `eps_fn` guides at
    ``settings.guidance_scale``."""
    t = diffedit_timestep(settings, alphas_cumprod.shape[0], steps_offset)
    abar = alphas_cumprod[t].to(latents)
    total = torch.zeros(latents.shape[0], *latents.shape[-2:], dtype=latents.dtype, device=latents.device)
    steps = torch.full((latents.shape[0],), t, dtype=torch.long, device=latents.device)
    for _ in range(settings.num_maps):
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        x_t = abar.sqrt() * latents + (1 - abar).sqrt() * noise
        difference = eps_fn(x_t, steps, target_cond) - eps_fn(x_t, steps, source_cond)
        total += difference.abs().mean(1)
    mean_map = total / settings.num_maps
    clamp = mean_map.mean((1, 2), keepdim=True) * settings.thresholding_ratio
    return (mean_map.clamp(min=torch.zeros_like(clamp), max=clamp) / clamp.clamp_min(1e-12)).clamp(0, 1)
