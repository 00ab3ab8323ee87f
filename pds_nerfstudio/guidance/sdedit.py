"""SDEdit with a deterministic DDIM sampler (SPEC stage 2; supplement S.3)."""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .gradients import EpsFn, noise_like


def ddim_timesteps(
    num_train_timesteps: int = 1000, num_inference_steps: int = 20, steps_offset: int = 0
) -> Int[Tensor, "num_inference_steps"]:
    """DDIM "leading" spacing tau_j = j * (T // N) + steps_offset, j = 0..N-1 (0, 50, ..., 950 for T=1000, N=20),
    as diffusers' ``DDIMScheduler.set_timesteps`` spaces them (ascending here)."""
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must be in [1, {num_train_timesteps}], got {num_inference_steps}"
        )
    ratio = num_train_timesteps // num_inference_steps
    if steps_offset < 0 or (num_inference_steps - 1) * ratio + steps_offset >= num_train_timesteps:
        raise ValueError(f"steps_offset {steps_offset} puts the last of {num_inference_steps} DDIM steps past "
                         f"t = {num_train_timesteps - 1}")  # fmt: skip
    return torch.arange(num_inference_steps, dtype=torch.long) * ratio + steps_offset


def ddim_step(
    x_t: Float[Tensor, "*shape"], eps: Float[Tensor, "*shape"], abar_t: Float[Tensor, ""], abar_prev: Float[Tensor, ""]
) -> Float[Tensor, "*shape"]:
    """One deterministic DDIM step (eta = 0; Song et al. 2021, eq. 12) from abar_t to abar_prev:
    x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), then sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps.
    This is diffusers' ``DDIMScheduler.step(eta=0)`` on an epsilon prediction, without clipping or thresholding
    (held to it in tests/test_sdedit.py)."""
    x0_hat = (x_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    return abar_prev.sqrt() * x0_hat + (1 - abar_prev).sqrt() * eps


def sample_sdedit_steps(
    num_inference_steps: int = 20,
    ratio_range: tuple[float, float] = (0.0, 0.2),
    generator: torch.Generator | None = None,
) -> int:
    """Number k of the N DDIM steps to run: uniform integer in [round(min N), round(max N)]."""
    low_ratio, high_ratio = ratio_range
    if not 0.0 <= low_ratio <= high_ratio <= 1.0:
        raise ValueError(f"ratio_range must satisfy 0 <= min <= max <= 1, got {ratio_range}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    low = math.floor(low_ratio * num_inference_steps + 0.5)
    high = math.floor(high_ratio * num_inference_steps + 0.5)
    sample_device = generator.device if generator is not None else None
    return int(torch.randint(low, high + 1, (1,), generator=generator, device=sample_device).item())


@torch.no_grad()
def sdedit(
    x0: Float[Tensor, "batch *latent"],
    eps_fn: EpsFn,
    alphas_cumprod: Float[Tensor, "num_train_timesteps"],
    cond: Float[Tensor, "batch *cond"],
    num_steps: int,
    num_inference_steps: int = 20,
    noise: Float[Tensor, "batch *latent"] | None = None,
    generator: torch.Generator | None = None,
    steps_offset: int = 0,
    final_alpha_cumprod: float = 1.0,
) -> Float[Tensor, "batch *latent"]:
    """Noise x0 to t0 = tau_{k-1} and run the last k = num_steps DDIM steps (eta = 0) to clean.

    x_t0 = sqrt(abar_t0) x0 + sqrt(1 - abar_t0) noise; each step from tau_j goes to tau_{j-1}, and the last
    one to ``final_alpha_cumprod`` (1: it returns x0_hat). A prior passes its scheduler's ``steps_offset`` and
    final abar (:attr:`pds_nerfstudio.prior.stable_diffusion.DiffusionPrior.ddim_settings`), so that the steps are
    diffusers' own. k = 0 returns a clone of x0.
    """
    if not 0 <= num_steps <= num_inference_steps:
        raise ValueError(f"num_steps must be in [0, {num_inference_steps}], got {num_steps}")
    if cond.shape[0] != x0.shape[0]:
        raise ValueError(f"cond needs a leading batch dim of {x0.shape[0]}, got shape {tuple(cond.shape)}")
    if noise is not None and noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    if num_steps == 0:
        return x0.detach().clone()

    abar_all = alphas_cumprod.to(device=x0.device, dtype=torch.float64)
    taus = ddim_timesteps(abar_all.shape[0], num_inference_steps, steps_offset)[:num_steps].tolist()
    noise = noise_like(x0, generator) if noise is None else noise
    abar = abar_all[taus[-1]]
    x = abar.sqrt() * x0.detach().to(torch.float64) + (1 - abar).sqrt() * noise.to(x0.device, torch.float64)
    for j in reversed(range(num_steps)):
        abar = abar_all[taus[j]]
        abar_prev = abar_all[taus[j - 1]] if j > 0 else abar.new_tensor(final_alpha_cumprod)
        t = torch.full((x0.shape[0],), taus[j], dtype=torch.long, device=x0.device)
        x = ddim_step(x, eps_fn(x.to(x0.dtype), t, cond).to(torch.float64), abar, abar_prev)
    return x.to(x0.dtype)
