"""Fixed points of PDS, SDS and DDS on Gaussian data, where they are known in closed form.

Data for prompt y are N(mu_y, s^2 I) and eps_fn is the exact noise predictor (analytic.py),
conditioned on cond = mu_y. With shared noises the gradient is affine in x0_tgt with a
scalar slope per timestep, so the expected gradient over i in [10, 490) has one zero:
  DDS  x0_src + (mu_tgt - mu_src)        (identity kept, edit applied in full)
  SDS  mu_tgt                            (source deviation d lost)
  PDS  x0_src + alpha (mu_tgt - mu_src)  (alpha from analytic.pds_alpha; derivation there)
The PDS algebra (analytic.pds_alpha docstring) agrees with SPEC's alpha formulas.
"""

from __future__ import annotations

import pytest
import torch
from analytic import DTYPE, gaussian_eps_fn, pds_alpha, sd_alphas_cumprod

from pds_nerfstudio.guidance import guidance_gradient

ABAR = sd_alphas_cumprod()
S = 0.5
EPS_FN = gaussian_eps_fn(ABAR, S)
SHAPE = (4, 4, 4)  # 64 dimensions per item
CASES = [("pds", "authors"), ("pds", "paper"), ("dds", "authors"), ("sds", "authors")]


def gaussian_problem(batch: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mu_src = torch.randn(batch, *SHAPE, generator=gen, dtype=DTYPE)
    deviation = S * torch.randn(batch, *SHAPE, generator=gen, dtype=DTYPE)
    edit = torch.randn(batch, *SHAPE, generator=gen, dtype=DTYPE)
    return {
        "mu_src": mu_src, "d": deviation, "x_src": mu_src + deviation, "delta": edit, "mu_tgt": mu_src + edit
    }


def expected_fixed_point(problem: dict[str, torch.Tensor], method: str, weighting: str) -> torch.Tensor:
    """Zero of E_i[grad] over every i in [10, 490), from two evaluations of the affine map."""
    i = torch.arange(10, 490)
    n = len(i)
    gen = torch.Generator().manual_seed(0)
    # pds/dds: noise cancels between the branches, so any noise gives the expectation.
    # sds: grad is affine in the noise, so its expectation is the value at zero noise.
    noise = torch.randn(n, *SHAPE, generator=gen, dtype=DTYPE)
    noise_prev = torch.randn(n, *SHAPE, generator=gen, dtype=DTYPE)
    if method == "sds":
        noise = torch.zeros_like(noise)

    def mean_grad(x: torch.Tensor) -> torch.Tensor:
        rep = lambda v: v.expand(n, *SHAPE)  # noqa: E731
        out = guidance_gradient(
            method, rep(x), EPS_FN, ABAR, rep(problem["mu_tgt"]), rep(problem["x_src"]),
            rep(problem["mu_src"]), weighting=weighting, t=2 * i, t_prev=2 * i - 2,
            noise=noise, noise_prev=noise_prev,
        )
        return out.grad.mean(0, keepdim=True)

    x0 = problem["x_src"]
    direction = torch.randn(1, *SHAPE, generator=gen, dtype=DTYPE)
    grad0, grad1 = mean_grad(x0), mean_grad(x0 + direction)
    slope = ((grad1 - grad0) * direction).sum() / (direction**2).sum()
    # The slope is a scalar times the identity (float64 rounding only: 1e-10).
    torch.testing.assert_close(grad1 - grad0, slope * direction, rtol=0, atol=1e-10)
    return x0 - grad0 / slope


def test_analytic_alphas_match_spec():
    # SPEC: about 0.33 (authors) and 0.16 (paper) for SD's schedule, s = 0.5, i in [10, 490).
    # Measured 0.32997 and 0.15919; 0.005 allows for SPEC's two-digit rounding.
    assert abs(pds_alpha(ABAR, S, "authors") - 0.33) < 0.005
    assert abs(pds_alpha(ABAR, S, "paper") - 0.16) < 0.005


@pytest.mark.parametrize("method,weighting", CASES)
def test_exact_expected_fixed_point(method, weighting):
    # Exact expectation over i: only float64 rounding, so 1e-9 relative to |mu_tgt - mu_src|.
    problem = gaussian_problem(1, seed=1)
    x_star = expected_fixed_point(problem, method, weighting)
    if method == "sds":
        expected = problem["mu_tgt"]
    else:
        alpha = 1.0 if method == "dds" else pds_alpha(ABAR, S, weighting)
        expected = problem["x_src"] + alpha * problem["delta"]
    assert (x_star - expected).norm() / problem["delta"].norm() < 1e-9


@pytest.mark.parametrize(
    "method,weighting,lr,iterations",
    # Step sizes below 2 / max_i(slope_i): max slope 1.82 (pds authors), 6.16 (pds paper), <= 1 (dds, sds).
    [
        ("pds", "authors", 1.0, 1000),
        ("pds", "paper", 0.3, 1500),
        ("dds", "authors", 1.0, 400),
        ("sds", "authors", 1.0, 1000),
    ],
)
def test_stochastic_descent_reaches_fixed_point(method, weighting, lr, iterations):
    # 64 independent chains in one batch, fresh t and noises every step, Polyak average of the
    # second half. The average's mean is exactly the fixed point (the slope is drawn independently
    # of the iterate); tolerances are ~5 standard errors, measured over seeds.
    problem = gaussian_problem(64, seed=2)
    x_src, delta, d = problem["x_src"], problem["delta"], problem["d"]
    gen = torch.Generator().manual_seed(3)
    x, average = x_src.clone(), torch.zeros_like(x_src)
    for step in range(iterations):
        out = guidance_gradient(
            method, x, EPS_FN, ABAR, problem["mu_tgt"], x_src, problem["mu_src"],
            weighting=weighting, generator=gen,
        )
        x = x - lr * out.grad
        if step >= iterations // 2:
            average += x
    average /= iterations - iterations // 2

    if method == "sds":
        # d is lost: no component of d left about mu_tgt (0.02), only sampling noise (residual 0.1 |d|).
        offset = average - problem["mu_tgt"]
        assert abs(float((offset * d).sum() / (d**2).sum())) < 0.02
        assert float(offset.norm() / d.norm()) < 0.1
        return

    # pds/dds: noises cancel, so each chain moves exactly along its own delta (1e-9).
    moved = average - x_src
    dims = (1, 2, 3)
    along = (moved * delta).sum(dim=dims, keepdim=True) / (delta**2).sum(dim=dims, keepdim=True)
    assert float((moved - along * delta).norm() / delta.norm()) < 1e-9
    alpha_hat = float((moved * delta).sum() / (delta**2).sum())
    if method == "dds":
        assert abs(alpha_hat - 1.0) < 1e-6  # deterministic contraction to 1
    else:
        assert abs(alpha_hat - pds_alpha(ABAR, S, weighting)) < 0.01
