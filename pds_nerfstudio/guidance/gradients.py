"""PDS, SDS and DDS gradients on a target latent (SPEC steps 3-8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .coefficients import dreamcatalyst_coefficients, pds_coefficients, posterior_coefficients
from .timesteps import sample_timesteps

# eps(x_t (B, C, H, W), t (B,), cond (B, ...)) -> predicted noise (B, C, H, W), guidance applied.
EpsFn = Callable[[Tensor, Tensor, Tensor], Tensor]

METHODS = ("pds", "sds", "dds")
WEIGHTINGS = ("authors", "paper", "dreamcatalyst")


@dataclass
class GuidanceOutput:
    """Gradient on x0_tgt (constant, non-finite entries zeroed) and what produced it."""

    grad: Float[Tensor, "batch *latent"]
    t: Int[Tensor, "batch"]
    t_prev: Int[Tensor, "batch"] | None
    eps_tgt: Float[Tensor, "batch *latent"]
    eps_src: Float[Tensor, "batch *latent"] | None


def surrogate_loss(
    x0: Float[Tensor, "batch *latent"], grad: Float[Tensor, "batch *latent"]
) -> Float[Tensor, ""]:
    """0.5 * ||x0 - stopgrad(x0 - grad)||^2, whose gradient with respect to x0 is grad (SPEC step 8)."""
    target = (x0 - grad).detach()
    return 0.5 * ((x0 - target) ** 2).sum()


def _per_item(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-item values (B,) to broadcast over a (B, ...) tensor."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device, returned on x's."""
    sample_device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=sample_device)
    return noise.to(x.device)


def _noised(abar: Tensor, x0: Tensor, noise: Tensor) -> Tensor:
    """Forward process x_t = sqrt(abar) x0 + sqrt(1 - abar) noise (SPEC step 4)."""
    return _per_item(abar.sqrt(), x0) * x0 + _per_item((1 - abar).sqrt(), x0) * noise


def _as_batch_timesteps(t: Tensor | int, batch_size: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    if t.dtype.is_floating_point:
        raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch_size)):
        raise ValueError(
            f"timesteps must be a scalar or shaped ({batch_size},), got {tuple(t.shape)}"
        )
    return t.to(torch.long).expand(batch_size).clone()


def _check_inputs(
    method: str,
    weighting: str,
    x0_tgt: Tensor,
    alphas_cumprod: Tensor,
    cond_tgt: Tensor,
    x0_src: Tensor | None,
    cond_src: Tensor | None,
    noise: Tensor | None,
    noise_prev: Tensor | None,
) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if x0_tgt.ndim < 2:
        raise ValueError(f"x0_tgt must be batched (B, ...), got shape {tuple(x0_tgt.shape)}")
    if alphas_cumprod.ndim != 1:
        raise ValueError("alphas_cumprod must be one-dimensional (num_train_timesteps,)")
    batch_size = x0_tgt.shape[0]
    if cond_tgt.shape[0] != batch_size:
        raise ValueError(
            f"cond_tgt needs a leading batch dim of {batch_size}, got shape {tuple(cond_tgt.shape)}"
        )
    for name, tensor in (("noise", noise), ("noise_prev", noise_prev)):
        if tensor is not None and tensor.shape != x0_tgt.shape:
            raise ValueError(
                f"{name} must have x0_tgt's shape {tuple(x0_tgt.shape)}, got {tuple(tensor.shape)}"
            )
    if method == "sds":
        return
    if x0_src is None or cond_src is None:
        raise ValueError(f"method {method!r} needs x0_src and cond_src")
    if x0_src.shape != x0_tgt.shape:
        raise ValueError(
            f"x0_src shape {tuple(x0_src.shape)} differs from x0_tgt shape {tuple(x0_tgt.shape)}"
        )
    if cond_src.shape != cond_tgt.shape:
        raise ValueError(
            f"cond_src shape {tuple(cond_src.shape)} differs from cond_tgt shape {tuple(cond_tgt.shape)}"
        )


@torch.no_grad()
def guidance_gradient(
    method: Literal["pds", "sds", "dds"],
    x0_tgt: Float[Tensor, "batch *latent"],
    eps_fn: EpsFn,
    alphas_cumprod: Float[Tensor, "num_train_timesteps"],
    cond_tgt: Float[Tensor, "batch *cond"],
    x0_src: Float[Tensor, "batch *latent"] | None = None,
    cond_src: Float[Tensor, "batch *cond"] | None = None,
    *,
    weighting: Literal["authors", "paper", "dreamcatalyst"] = "authors",
    t: Int[Tensor, "batch"] | None = None,
    t_prev: Int[Tensor, "batch"] | None = None,
    noise: Float[Tensor, "batch *latent"] | None = None,
    noise_prev: Float[Tensor, "batch *latent"] | None = None,
    generator: torch.Generator | None = None,
    num_subset_steps: int = 500,
    ratio_range: tuple[float, float] = (0.02, 0.98),
) -> GuidanceOutput:
    """Gradient of PDS, SDS or DDS with respect to the target latent x0_tgt.

    pds: authors' weighting z_tgt - z_src with z = (x_t' - mu(x_t, y)) / sigma; paper's
    weighting psi (x0_tgt - x0_src) + chi (e_tgt - e_src) (Eq. 16), equal to (2c/sigma)
    times the authors'; DreamCatalyst's weighting of the same two terms (``dreamcatalyst_coefficients``). sds: (1 - abar_t)(e_tgt(x_t) - noise). dds: e_tgt - e_src.
    Source and target share noises and t, and go through eps_fn in one call of batch 2B
    ([tgt; src]). Unset t is drawn with sample_timesteps; unset t_prev with t given is
    t - T // num_subset_steps. Unset noises are drawn with `generator`. Coefficients are
    float64; grad has x0_tgt's dtype and non-finite entries replaced by 0. No autograd.
    """
    _check_inputs(method, weighting, x0_tgt, alphas_cumprod, cond_tgt, x0_src, cond_src, noise, noise_prev)
    batch_size, device, dtype = x0_tgt.shape[0], x0_tgt.device, x0_tgt.dtype
    num_train_timesteps = alphas_cumprod.shape[0]
    abar_all = alphas_cumprod.to(device=device, dtype=torch.float64)

    if t is None:
        if t_prev is not None:
            raise ValueError("t_prev was given without t")
        t, t_prev = sample_timesteps(
            num_train_timesteps, num_subset_steps, ratio_range, batch_size, generator, device
        )
    else:
        t = _as_batch_timesteps(t, batch_size, device)
        if t_prev is not None:
            t_prev = _as_batch_timesteps(t_prev, batch_size, device)
        elif method == "pds":
            t_prev = t - num_train_timesteps // num_subset_steps
    if bool((t < 0).any()) or bool((t >= num_train_timesteps).any()):
        raise ValueError(f"t must lie in [0, {num_train_timesteps})")

    noise = noise_like(x0_tgt, generator) if noise is None else noise
    if method == "pds" and noise_prev is None:
        noise_prev = noise_like(x0_tgt, generator)
    noise64 = noise.to(device=device, dtype=torch.float64)
    abar = abar_all[t]
    x0_tgt64 = x0_tgt.detach().to(torch.float64)

    if method == "sds":
        x_t = _noised(abar, x0_tgt64, noise64)
        eps_tgt = eps_fn(x_t.to(dtype), t, cond_tgt)
        grad = _per_item(1 - abar, x_t) * (eps_tgt.to(torch.float64) - noise64)
        return GuidanceOutput(_finite(grad, dtype), t, t_prev, eps_tgt, None)

    assert x0_src is not None and cond_src is not None
    x0_both = torch.cat([x0_tgt64, x0_src.detach().to(device=device, dtype=torch.float64)])
    abar_both = abar.repeat(2)
    x_t = _noised(abar_both, x0_both, torch.cat([noise64, noise64]))  # shared noise
    eps_both = eps_fn(x_t.to(dtype), t.repeat(2), torch.cat([cond_tgt, cond_src]))
    eps_tgt, eps_src = eps_both[:batch_size], eps_both[batch_size:]
    eps64 = eps_both.to(torch.float64)

    eps_diff = eps64[:batch_size] - eps64[batch_size:]
    if method == "dds":
        grad = eps_diff
    elif weighting == "dreamcatalyst":
        w_eps, w_x0 = dreamcatalyst_coefficients(t, num_train_timesteps, num_subset_steps)
        x0_diff = x0_both[:batch_size] - x0_both[batch_size:]
        grad = _per_item(w_eps, eps_diff) * eps_diff + _per_item(w_x0, x0_diff) * x0_diff
    elif weighting == "paper":
        # Paper Eq. 16: psi (x0_tgt - x0_src) + chi (e_tgt - e_src).
        psi, chi = pds_coefficients(abar_all, t, t_prev)
        x0_diff = x0_both[:batch_size] - x0_both[batch_size:]
        grad = _per_item(psi, x0_diff) * x0_diff + _per_item(chi, eps_diff) * eps_diff
    else:
        grad = _pds_authors(abar_all, t, t_prev, x0_both, x_t, eps64, noise_prev)
    return GuidanceOutput(_finite(grad, dtype), t, t_prev, eps_tgt, eps_src)


def _pds_authors(
    abar_all: Tensor,
    t: Tensor,
    t_prev: Tensor,
    x0_both: Tensor,
    x_t: Tensor,
    eps64: Tensor,
    noise_prev: Tensor,
) -> Tensor:
    """z_tgt - z_src with z = (x_t' - mu(x_t, y)) / sigma (SPEC steps 6-7); inputs stacked [tgt; src]."""
    batch_size = t.shape[0]
    coef = posterior_coefficients(abar_all, t, t_prev)
    abar, abar_prev = abar_all[t].repeat(2), abar_all[t_prev].repeat(2)
    noise_prev64 = noise_prev.to(device=x_t.device, dtype=torch.float64)
    x_t_prev = _noised(abar_prev, x0_both, torch.cat([noise_prev64, noise_prev64]))
    x0_hat = (x_t - _per_item((1 - abar).sqrt(), x_t) * eps64) / _per_item(abar.sqrt(), x_t)
    mean = _per_item(coef.gamma.repeat(2), x_t) * x0_hat + _per_item(coef.delta.repeat(2), x_t) * x_t
    z = (x_t_prev - mean) / _per_item(coef.sigma.repeat(2), x_t)
    return z[:batch_size] - z[batch_size:]


def _finite(grad: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast to the latent's dtype, then zero non-finite entries (SPEC step 8)."""
    return torch.nan_to_num(grad.to(dtype), nan=0.0, posinf=0.0, neginf=0.0)
