"""What the prior itself draws for a caption, in the layout of a scene's views (for the fidelity benchmark).

An edit that misses its target colour may fail because of the edit or because the prior cannot draw that
colour. To tell them apart, the prior samples the caption with nothing of the edit involved: a DDIM sample
(eta = 0) from pure noise in which, after every step, the latents outside the object's mask are replaced by
the source view's latents noised to that step (blended latent diffusion, Avrahami et al. 2023). The object is
then where the view's mask says, lit as in the view, so the edit's own colour measure reads it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from pds_nerfstudio.guidance import EpsFn
from pds_nerfstudio.guidance.sdedit import ddim_step, ddim_timesteps


@torch.no_grad()
def blended_samples(
    source_latents: Float[Tensor, "batch 4 h w"],
    masks: Bool[Tensor, "batch height width"],
    eps_fn: EpsFn,
    alphas_cumprod: Float[Tensor, "num_train_timesteps"],
    cond: Float[Tensor, "batch 77 dim"],
    num_inference_steps: int = 20,
    generator: torch.Generator | None = None,
    steps_offset: int = 0,
) -> Float[Tensor, "batch 4 h w"]:
    """Latents sampled under `cond` inside `masks` (dilated by one latent cell), equal to `source_latents` outside.
    `steps_offset` as in :func:`pds_nerfstudio.guidance.sdedit.sdedit`; the last step goes to abar = 1 (clean)."""
    inside = F.max_pool2d(masks[:, None].float(), kernel_size=masks.shape[-1] // source_latents.shape[-1])
    inside = F.max_pool2d(inside, kernel_size=3, stride=1, padding=1).to(source_latents)
    abar_all = alphas_cumprod.to(device=source_latents.device, dtype=torch.float64)
    taus = ddim_timesteps(abar_all.shape[0], num_inference_steps, steps_offset).tolist()
    noise = torch.randn(source_latents.shape, generator=generator).to(source_latents)
    source = source_latents.to(torch.float64)
    x = noise.to(torch.float64)
    for j in reversed(range(num_inference_steps)):
        abar = abar_all[taus[j]]
        abar_prev = abar_all[taus[j - 1]] if j > 0 else abar.new_tensor(1.0)
        t = torch.full((len(x),), taus[j], dtype=torch.long, device=x.device)
        x = ddim_step(x, eps_fn(x.to(source_latents.dtype), t, cond).to(torch.float64), abar, abar_prev)
        known = abar_prev.sqrt() * source + (1 - abar_prev).sqrt() * noise.to(torch.float64)
        x = inside * x + (1 - inside) * known
    return x.to(source_latents.dtype)
