"""Closed-form references for the guidance tests: SD's schedule and Gaussian data.

If the data for a prompt are N(mu, s^2 I), then x_t = sqrt(a) x0 + sqrt(1 - a) eps is
Gaussian jointly with eps, Cov(eps, x_t) = sqrt(1 - a) I and Var(x_t) = (a s^2 + 1 - a) I, so
the exact noise predictor E[eps | x_t] is linear:
    eps(x_t, t) = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a),   a = abar_t.
"""

from __future__ import annotations

import torch
from torch import Tensor

DTYPE = torch.float64


def sd_alphas_cumprod(num_train_timesteps: int = 1000) -> Tensor:
    """Stable Diffusion's scaled_linear schedule (beta 0.00085 to 0.012), cumulative product, float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_train_timesteps, dtype=DTYPE) ** 2
    return torch.cumprod(1 - betas, dim=0)


def gaussian_eps_fn(alphas_cumprod: Tensor, s: float):
    """Exact noise predictor for data N(cond, s^2 I); cond is the per-item mean, shaped like x_t."""

    def eps_fn(x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        a = alphas_cumprod.to(x_t)[t].view(-1, *([1] * (x_t.ndim - 1)))
        return (1 - a).sqrt() * (x_t - a.sqrt() * cond) / (a * s**2 + 1 - a)

    return eps_fn


def spec_coefficients(alphas_cumprod: Tensor, t: Tensor, t_prev: Tensor) -> dict[str, Tensor]:
    """gamma, delta, sigma, c straight from SPEC step 6-7 (independent of the package's algebra)."""
    abar = alphas_cumprod.to(DTYPE)
    a, a_prev = abar[t], abar[t_prev]
    a_before = torch.where(t > 0, abar[(t - 1).clamp(min=0)], torch.ones_like(a))
    alpha = a / a_before
    beta = 1 - alpha
    gamma = a_prev.sqrt() * beta / (1 - a)
    delta = alpha.sqrt() * (1 - a_prev) / (1 - a)
    sigma = ((1 - a_prev) / (1 - a) * beta).sqrt()
    c = a_prev.sqrt() - gamma - delta * a.sqrt()
    return {"gamma": gamma, "delta": delta, "sigma": sigma, "c": c, "a": a}


def pds_alpha(alphas_cumprod: Tensor, s: float, weighting: str, low: int = 10, high: int = 490) -> float:
    """Fraction alpha of mu_tgt - mu_src that PDS keeps at its fixed point, i uniform in [low, high).

    Per timestep the authors' gradient is [c dx + gamma sqrt(1/a - 1) de] / sigma with
    dx = x_tgt - x_src. Shared noise gives x_t^tgt - x_t^src = sqrt(a) dx, hence
    de = sqrt(1 - a) sqrt(a) (dx - dmu) / (a s^2 + 1 - a) and
    gamma sqrt(1/a - 1) de = k (dx - dmu) with k = gamma (1 - a) / (a s^2 + 1 - a).
    So g = [(c + k) dx - k dmu] / sigma (noise-free), and E_i[g] = 0 at dx = alpha dmu with
    alpha = E[k / sigma] / E[(c + k) / sigma]; the paper's weighting multiplies g by 2c/sigma.
    """
    i = torch.arange(low, high)
    coef = spec_coefficients(alphas_cumprod, 2 * i, 2 * i - 2)
    a, c, sigma = coef["a"], coef["c"], coef["sigma"]
    k = coef["gamma"] * (1 - a) / (a * s**2 + 1 - a)
    if weighting == "authors":
        return float((k / sigma).mean() / ((c + k) / sigma).mean())
    return float((c * k / sigma**2).mean() / (c * (c + k) / sigma**2).mean())


def ddim_step_factor(a: float | Tensor, a_prev: float | Tensor, s: float) -> Tensor:
    """One DDIM step (eta = 0) on Gaussian data is affine about the scaled mean:
    x_prev - sqrt(a') mu = f (x - sqrt(a) mu), f = (sqrt(a a') s^2 + sqrt((1-a)(1-a'))) / (a s^2 + 1 - a).
    """
    a, a_prev = torch.as_tensor(a, dtype=DTYPE), torch.as_tensor(a_prev, dtype=DTYPE)
    return ((a * a_prev).sqrt() * s**2 + ((1 - a) * (1 - a_prev)).sqrt()) / (a * s**2 + 1 - a)
