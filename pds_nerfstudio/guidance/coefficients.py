"""Posterior coefficients of q(x_t' | x_t, x_0), the PDS weights psi, chi (SPEC step 6-7), and DreamCatalyst's
weights of the same two terms."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass(frozen=True)
class PosteriorCoefficients:
    """float64 coefficients, shaped like t: mu = gamma x0_hat + delta x_t, std sigma.

    c = sqrt(abar_t') - gamma - delta sqrt(abar_t) is the weight of x0_tgt - x0_src in
    z_tgt - z_src (supplement Eq. 10); it vanishes for t' = t - 1.
    """

    gamma: Float[Tensor, "*batch"]
    delta: Float[Tensor, "*batch"]
    sigma: Float[Tensor, "*batch"]
    c: Float[Tensor, "*batch"]


def _check_timesteps(num_train_timesteps: int, t: Tensor, t_prev: Tensor) -> None:
    if t.dtype.is_floating_point or t_prev.dtype.is_floating_point:
        raise ValueError("t and t_prev must be integer tensors")
    if bool((t_prev < 0).any()) or bool((t >= num_train_timesteps).any()):
        raise ValueError(
            f"timesteps must satisfy 0 <= t_prev and t < {num_train_timesteps}"
        )
    if bool((t_prev >= t).any()):
        raise ValueError("t_prev must be smaller than t")


def posterior_coefficients(
    alphas_cumprod: Float[Tensor, "num_train_timesteps"],
    t: Int[Tensor, "*batch"],
    t_prev: Int[Tensor, "*batch"],
) -> PosteriorCoefficients:
    """Coefficients of the DDPM posterior from t to t' = t_prev, in float64.

    Authors' convention (SPEC step 6): beta_t, alpha_t are the single-step values at t,
    alpha_t = abar[t] / abar[t-1] with abar[-1] := 1, whatever t' is.
    """
    abar_all = alphas_cumprod.to(torch.float64)
    t = torch.as_tensor(t, device=abar_all.device)
    t_prev = torch.as_tensor(t_prev, device=abar_all.device)
    _check_timesteps(abar_all.shape[0], t, t_prev)
    abar_with_one = torch.cat([abar_all.new_ones(1), abar_all])  # index j + 1 holds abar[j]
    abar = abar_with_one[t + 1]
    abar_before = abar_with_one[t]  # abar[t - 1], 1 for t = 0
    abar_prev = abar_with_one[t_prev + 1]  # abar[t']

    alpha = abar / abar_before
    beta = (abar_before - abar) / abar_before
    gamma = abar_prev.sqrt() * beta / (1 - abar)
    delta = alpha.sqrt() * (1 - abar_prev) / (1 - abar)
    sigma = ((1 - abar_prev) / (1 - abar) * beta).sqrt()
    # c = sqrt(abar') - gamma - delta sqrt(abar), rewritten with abar = alpha abar[t-1] as
    # alpha [sqrt(abar')(1 - abar[t-1]) - sqrt(abar[t-1])(1 - abar')] / (1 - abar):
    # the bracket is x - x, exactly 0.0, when t' = t - 1 (abar' and abar[t-1] are one element).
    bracket = abar_prev.sqrt() * (1 - abar_before) - abar_before.sqrt() * (1 - abar_prev)
    c = alpha * bracket / (1 - abar)
    return PosteriorCoefficients(gamma=gamma, delta=delta, sigma=sigma, c=c)


def pds_coefficients(
    alphas_cumprod: Float[Tensor, "num_train_timesteps"],
    t: Int[Tensor, "*batch"],
    t_prev: Int[Tensor, "*batch"],
) -> tuple[Float[Tensor, "*batch"], Float[Tensor, "*batch"]]:
    """(psi, chi) of the paper's Eq. 17-18, float64; exactly 0.0 when t_prev = t - 1.

    psi = 2 c^2 / sigma^2, chi = 2 c gamma sqrt(1/abar_t - 1) / sigma^2.
    """
    coef = posterior_coefficients(alphas_cumprod, t, t_prev)
    abar = alphas_cumprod.to(torch.float64)[torch.as_tensor(t, device=alphas_cumprod.device)]
    psi = 2 * coef.c**2 / coef.sigma**2
    chi = 2 * coef.c * coef.gamma * (1 / abar - 1).sqrt() / coef.sigma**2
    return psi, chi


DREAMCATALYST_DELTA, DREAMCATALYST_GAMMA, DREAMCATALYST_PSI = 0.2, 0.8, 0.075
"""DreamCatalyst's constants (Kim et al. 2025, their DCConfig: delta, gamma, psi)."""


def dreamcatalyst_coefficients(
    t: Int[Tensor, "*batch"], num_train_timesteps: int, num_subset_steps: int
) -> tuple[Float[Tensor, "*batch"], Float[Tensor, "*batch"]]:
    """DreamCatalyst's weights (w_eps, w_x0) of e_tgt - e_src and x0_tgt - x0_src at t = tau_i, float64:
    w_eps = delta + gamma * s^(1/e) and w_x0 = psi * exp(s), with s = i / S the normalised subset index."""
    s = (t // (num_train_timesteps // num_subset_steps)).to(torch.float64) / num_subset_steps
    return DREAMCATALYST_DELTA + DREAMCATALYST_GAMMA * s ** (1 / math.e), DREAMCATALYST_PSI * torch.exp(s)
