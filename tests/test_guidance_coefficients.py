"""Coefficients, timestep sampling and the per-call behaviour of guidance_gradient."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from analytic import DTYPE, sd_alphas_cumprod, spec_coefficients

from pds_nerfstudio.guidance import (
    guidance_gradient,
    pds_coefficients,
    posterior_coefficients,
    sample_timesteps,
    surrogate_loss,
)
from pds_nerfstudio.guidance.timesteps import annealed_subset_index, annealed_timesteps

ABAR = sd_alphas_cumprod()
SUBSET_I = torch.arange(1, 500)  # every subset index with tau_{i-1} >= 0


def linear_eps_fn(channels: int = 4, cond_dim: int = 3, seed: int = 0):
    """An arbitrary (not denoising) eps: a random linear map of x_t, cond and t, float64."""
    gen = torch.Generator().manual_seed(seed)
    weight_x = torch.randn(channels, channels, generator=gen, dtype=DTYPE)
    weight_c = torch.randn(channels, cond_dim, generator=gen, dtype=DTYPE)

    def eps_fn(x_t, t, cond):
        out = torch.einsum("dc,bchw->bdhw", weight_x, x_t)
        out = out + (cond @ weight_c.T)[:, :, None, None] + (t.to(DTYPE) / 1000)[:, None, None, None]
        return out

    return eps_fn


def run(method, eps_fn, inputs, **kwargs):
    """guidance_gradient on SD's schedule with the keyword inputs of random_inputs()."""
    return guidance_gradient(method, eps_fn=eps_fn, alphas_cumprod=ABAR, **inputs, **kwargs)


def random_inputs(batch: int = 6, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 4, 5, 3)
    return {
        "x0_tgt": torch.randn(shape, generator=gen, dtype=DTYPE),
        "x0_src": torch.randn(shape, generator=gen, dtype=DTYPE),
        "cond_tgt": torch.randn(batch, 3, generator=gen, dtype=DTYPE),
        "cond_src": torch.randn(batch, 3, generator=gen, dtype=DTYPE),
        "noise": torch.randn(shape, generator=gen, dtype=DTYPE),
        "noise_prev": torch.randn(shape, generator=gen, dtype=DTYPE),
    }


# ---------------------------------------------------------------- coefficients


def test_psi_chi_exactly_zero_for_consecutive_steps():
    # Exact equality (no tolerance): the paper says the coefficients vanish for t' = t - 1.
    t = torch.arange(1, 1000)
    psi, chi = pds_coefficients(ABAR, t, t - 1)
    coef = posterior_coefficients(ABAR, t, t - 1)
    assert torch.equal(coef.c, torch.zeros_like(coef.c))
    assert torch.equal(psi, torch.zeros_like(psi))
    assert torch.equal(chi, torch.zeros_like(chi))


def test_posterior_coefficients_match_spec_definitions():
    # Package rewrites c algebraically; compare with the SPEC's literal formulas. float64
    # rounding of a difference of O(1) terms: 1e-12 relative (c relative to sqrt(abar_t')).
    gen = torch.Generator().manual_seed(0)
    t_rand = torch.randint(2, 1000, (200,), generator=gen)
    t_prev_rand = (torch.rand(200, generator=gen, dtype=DTYPE) * t_rand).long()
    t = torch.cat([2 * SUBSET_I, t_rand])
    t_prev = torch.cat([2 * SUBSET_I - 2, t_prev_rand])
    coef = posterior_coefficients(ABAR, t, t_prev)
    ref = spec_coefficients(ABAR, t, t_prev)
    for name in ("gamma", "delta", "sigma"):
        torch.testing.assert_close(getattr(coef, name), ref[name], rtol=1e-12, atol=0)
        assert getattr(coef, name).dtype == torch.float64
    scale = ABAR[t_prev].sqrt()
    assert ((coef.c - ref["c"]).abs() / scale).max() < 1e-12


def test_subset_steps_have_positive_c_and_sigma():
    coef = posterior_coefficients(ABAR, 2 * SUBSET_I, 2 * SUBSET_I - 2)
    psi, chi = pds_coefficients(ABAR, 2 * SUBSET_I, 2 * SUBSET_I - 2)
    assert (coef.c > 0).all() and (coef.sigma > 0).all()
    assert (psi > 0).all() and (chi > 0).all()


def test_coefficients_reject_bad_timesteps():
    with pytest.raises(ValueError, match="smaller"):
        posterior_coefficients(ABAR, torch.tensor([10]), torch.tensor([10]))
    with pytest.raises(ValueError, match="t_prev"):
        posterior_coefficients(ABAR, torch.tensor([10]), torch.tensor([-1]))
    with pytest.raises(ValueError):
        posterior_coefficients(ABAR, torch.tensor([1000]), torch.tensor([998]))


# ---------------------------------------------------------------- timesteps


def test_sample_timesteps_default_range_and_spacing():
    # 20000 draws of 480 equally likely values: every value is hit with near certainty
    # (P(miss one) < 480 * exp(-20000/480) ~ 4e-16), so min/max are exactly 10 and 489.
    gen = torch.Generator().manual_seed(0)
    t, t_prev = sample_timesteps(batch_size=20000, generator=gen)
    assert t.shape == t_prev.shape == (20000,) and t.dtype == torch.long
    i = t // 2
    assert torch.equal(t, 2 * i) and torch.equal(t_prev, t - 2)
    assert int(i.min()) == 10 and int(i.max()) == 489
    assert len(torch.unique(i)) == 480


def test_sample_timesteps_generator_reproducible():
    first = sample_timesteps(batch_size=64, generator=torch.Generator().manual_seed(5))
    second = sample_timesteps(batch_size=64, generator=torch.Generator().manual_seed(5))
    other = sample_timesteps(batch_size=64, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], other[0])


def test_sample_timesteps_low_end_keeps_t_prev_nonnegative():
    gen = torch.Generator().manual_seed(0)
    t, t_prev = sample_timesteps(ratio_range=(0.0, 0.01), batch_size=500, generator=gen)
    assert int(t_prev.min()) >= 0 and set((t // 2).tolist()) <= set(range(1, 5))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ratio_range": (0.5, 0.5)},
        {"ratio_range": (0.6, 0.4)},
        {"ratio_range": (-0.1, 0.5)},
        {"ratio_range": (0.2, 1.1)},
        {"ratio_range": (0.0, 0.002)},  # only i = 0, which has no tau_{i-1}
        {"num_subset_steps": 0},
        {"num_subset_steps": 2000},
        {"batch_size": 0},
    ],
)
def test_sample_timesteps_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        sample_timesteps(**kwargs)


# ---------------------------------------------------------------- gradients


def test_paper_weighting_is_two_c_over_sigma_times_authors():
    # Same t, noises and an arbitrary linear eps: paper = (2c/sigma) * authors up to float64
    # rounding of z (terms of size 1/sigma ~ 40 cancel between branches): 1e-10.
    inputs = random_inputs()
    t = torch.tensor([20, 22, 200, 500, 978, 2])
    t_prev = t - 2
    eps_fn = linear_eps_fn()
    authors = run("pds", eps_fn, inputs, t=t, t_prev=t_prev, weighting="authors")
    paper = run("pds", eps_fn, inputs, t=t, t_prev=t_prev, weighting="paper")
    coef = posterior_coefficients(ABAR, t, t_prev)
    factor = (2 * coef.c / coef.sigma).view(-1, 1, 1, 1)
    torch.testing.assert_close(paper.grad, factor * authors.grad, rtol=1e-10, atol=1e-10)
    assert torch.equal(paper.eps_tgt, authors.eps_tgt) and torch.equal(paper.eps_src, authors.eps_src)


def test_same_seed_gives_same_draws_for_both_weightings():
    # Sampling t and noises from one generator: the two weightings still differ by 2c/sigma (1e-10).
    inputs = {k: v for k, v in random_inputs().items() if not k.startswith("noise")}
    eps_fn = linear_eps_fn()
    authors = run("pds", eps_fn, inputs, generator=torch.Generator().manual_seed(3))
    paper = run("pds", eps_fn, inputs, weighting="paper", generator=torch.Generator().manual_seed(3))
    assert torch.equal(authors.t, paper.t) and torch.equal(authors.t_prev, authors.t - 2)
    coef = posterior_coefficients(ABAR, authors.t, authors.t_prev)
    factor = (2 * coef.c / coef.sigma).view(-1, 1, 1, 1)
    torch.testing.assert_close(paper.grad, factor * authors.grad, rtol=1e-10, atol=1e-10)


def test_authors_pds_matches_literal_z_difference():
    # z = (x_t' - mu(x_t, y)) / sigma per branch, written out here; float64, 1e-10.
    inputs = random_inputs()
    t = torch.tensor([20, 100, 300, 500, 700, 978])
    eps_fn = linear_eps_fn()
    out = run("pds", eps_fn, inputs, t=t)
    assert torch.equal(out.t_prev, t - 2)  # default t_prev = t - T // S
    ref = spec_coefficients(ABAR, t, t - 2)
    view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    a, a_prev = view(ABAR[t]), view(ABAR[t - 2])

    def z(x0, cond):
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * inputs["noise"]
        x_t_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * inputs["noise_prev"]
        x0_hat = (x_t - (1 - a).sqrt() * eps_fn(x_t, t, cond)) / a.sqrt()
        mean = view(ref["gamma"]) * x0_hat + view(ref["delta"]) * x_t
        return (x_t_prev - mean) / view(ref["sigma"])

    expected = z(inputs["x0_tgt"], inputs["cond_tgt"]) - z(inputs["x0_src"], inputs["cond_src"])
    torch.testing.assert_close(out.grad, expected, rtol=1e-10, atol=1e-10)


def test_sds_and_dds_formulas_and_single_batched_call():
    inputs = random_inputs()
    base_eps = linear_eps_fn()
    calls = []

    def eps_fn(x_t, t, cond):
        calls.append((x_t.shape[0], t.shape[0], cond.shape[0]))
        return base_eps(x_t, t, cond)

    t = torch.tensor([20, 100, 300, 500, 700, 978])
    a = ABAR[t].view(-1, 1, 1, 1)
    x_t_tgt = a.sqrt() * inputs["x0_tgt"] + (1 - a).sqrt() * inputs["noise"]
    x_t_src = a.sqrt() * inputs["x0_src"] + (1 - a).sqrt() * inputs["noise"]

    x0_tgt, cond_tgt = inputs["x0_tgt"], inputs["cond_tgt"]
    sds = guidance_gradient("sds", x0_tgt, eps_fn, ABAR, cond_tgt, t=t, noise=inputs["noise"])
    assert calls == [(6, 6, 6)] and sds.eps_src is None
    # float64 rounding only: 1e-12.
    expected = (1 - a) * (base_eps(x_t_tgt, t, inputs["cond_tgt"]) - inputs["noise"])
    torch.testing.assert_close(sds.grad, expected, rtol=1e-12, atol=1e-12)

    calls.clear()
    dds = run("dds", eps_fn, inputs, t=t)
    assert calls == [(12, 12, 12)]  # [tgt; src] in one call
    expected = base_eps(x_t_tgt, t, inputs["cond_tgt"]) - base_eps(x_t_src, t, inputs["cond_src"])
    torch.testing.assert_close(dds.grad, expected, rtol=1e-12, atol=1e-12)

    calls.clear()
    run("pds", eps_fn, inputs)
    assert calls == [(12, 12, 12)]


@pytest.mark.parametrize(
    "method,weighting", [("pds", "authors"), ("pds", "paper"), ("sds", "authors"), ("dds", "authors")]
)
def test_non_finite_eps_gives_zero_grad_there(method, weighting):
    inputs = random_inputs()
    base_eps = linear_eps_fn()
    bad = torch.zeros(12, 4, 5, 3, dtype=torch.bool)
    bad[0, 1, 2, 0] = bad[3, 0, 0, 0] = bad[6 + 1, 2, 1, 1] = bad[5, 3, 4, 2] = True
    values = torch.tensor([float("nan"), float("inf"), float("-inf"), float("nan")], dtype=DTYPE)

    def eps_fn(x_t, t, cond):
        out = base_eps(x_t, t, cond)
        mask = bad[: x_t.shape[0]]
        out[mask] = values[: int(mask.sum())]
        return out

    if method == "sds":
        gen = torch.Generator().manual_seed(0)
        out = guidance_gradient("sds", inputs["x0_tgt"], eps_fn, ABAR, inputs["cond_tgt"], generator=gen)
        bad_tgt = bad[:6]
    else:
        out = run(method, eps_fn, inputs, weighting=weighting, generator=torch.Generator().manual_seed(0))
        bad_tgt = bad[:6] | bad[6:]
    assert torch.isfinite(out.grad).all()
    assert (out.grad[bad_tgt] == 0).all()
    assert (out.grad[~bad_tgt] != 0).all()
    assert out.grad.dtype == inputs["x0_tgt"].dtype and out.grad.shape == inputs["x0_tgt"].shape


def test_grad_has_latent_dtype_and_no_graph():
    inputs = {k: v.float() for k, v in random_inputs().items()}
    x0 = inputs.pop("x0_tgt").requires_grad_(True)

    def eps_fn(x_t, t, cond):
        assert x_t.dtype == torch.float32
        return 0.5 * x_t

    out = guidance_gradient("pds", x0, eps_fn, ABAR.float(), **inputs)
    assert out.grad.dtype == torch.float32 and not out.grad.requires_grad


def test_surrogate_loss_gradient_is_grad():
    # d/dx0 of 0.5 ||x0 - (x0 - g)||^2 is x0 - (x0 - g): g up to one rounding of x0 - g (1e-14).
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 3, generator=gen, dtype=DTYPE, requires_grad=True)
    grad = torch.randn(2, 4, 3, 3, generator=gen, dtype=DTYPE)
    surrogate_loss(x0, grad).backward()
    torch.testing.assert_close(x0.grad, grad, rtol=0, atol=1e-14)


def test_guidance_gradient_validates_inputs():
    inputs = random_inputs()
    eps_fn = linear_eps_fn()
    with pytest.raises(ValueError, match="method"):
        guidance_gradient("xds", eps_fn=eps_fn, alphas_cumprod=ABAR, **inputs)
    with pytest.raises(ValueError, match="weighting"):
        run("pds", eps_fn, inputs, weighting="both")
    for method in ("pds", "dds"):
        with pytest.raises(ValueError, match="x0_src"):
            guidance_gradient(method, inputs["x0_tgt"], eps_fn, ABAR, inputs["cond_tgt"])
    with pytest.raises(ValueError, match="shape"):
        run("pds", eps_fn, {**inputs, "x0_src": inputs["x0_src"][:, :2]})
    with pytest.raises(ValueError, match="cond_src"):
        run("dds", eps_fn, {**inputs, "cond_src": inputs["cond_src"][:3]})
    with pytest.raises(ValueError, match="cond_tgt"):
        guidance_gradient("sds", inputs["x0_tgt"], eps_fn, ABAR, inputs["cond_tgt"][:2])
    with pytest.raises(ValueError, match="noise"):
        run("pds", eps_fn, {**inputs, "noise": inputs["noise"][:1]})
    with pytest.raises(ValueError, match="t must"):
        run("dds", eps_fn, inputs, t=torch.tensor(1000))
    with pytest.raises(ValueError, match="smaller"):
        run("pds", eps_fn, inputs, t=torch.tensor(10), t_prev=torch.tensor(10))


def test_dreamcatalyst_weighting_is_their_two_terms_written_out():
    # DreamCatalyst (dc.py): grad = (delta + gamma s^(1/e)) (e_tgt - e_src) + psi exp(s) (x0_tgt - x0_src), s = i / S.
    inputs = random_inputs()
    t = torch.tensor([2, 20, 200, 500, 900, 998])
    eps_fn = linear_eps_fn()
    result = run("pds", eps_fn, inputs, t=t, weighting="dreamcatalyst")
    s = (t // 2).to(DTYPE) / 500
    w_eps = (0.2 + 0.8 * s ** (1 / math.e)).view(-1, 1, 1, 1)
    w_x0 = (0.075 * torch.exp(s)).view(-1, 1, 1, 1)
    x0_diff = inputs["x0_tgt"] - inputs["x0_src"]
    expected = w_eps * (result.eps_tgt - result.eps_src) + w_x0 * x0_diff
    torch.testing.assert_close(result.grad, expected.to(result.grad.dtype), rtol=1e-10, atol=1e-12)
    assert torch.equal(result.t, t)


def test_annealed_schedule_is_dreamcatalysts_linear_fall_over_the_stage():
    # dc_timestep_sampling: idx = (max - min) (K - k) / K + min over their index range (0.2 and 0.9 of 500: 100, 450)
    num_iterations = 3000
    indices = [annealed_subset_index(k, num_iterations, 500, (0.2, 0.9)) for k in range(num_iterations)]
    assert indices == [100 + math.floor(Fraction(350 * (num_iterations - k), num_iterations)) for k in range(num_iterations)]
    assert indices[0] == 450 and indices[-1] == 100 and all(a >= b for a, b in zip(indices, indices[1:]))
    assert annealed_subset_index(0, 10, 500, (0.02, 1.0)) == 499  # capped: tau_i < T
    t, t_prev = annealed_timesteps(5, 10, 1000, 500, (0.02, 0.98), batch_size=3)
    i = annealed_subset_index(5, 10, 500, (0.02, 0.98))
    assert t.tolist() == [2 * i] * 3 and t_prev.tolist() == [2 * i - 2] * 3
    with pytest.raises(ValueError, match="iteration"):
        annealed_subset_index(10, 10, 500, (0.02, 0.98))


def test_annealed_guidance_options_take_the_schedule_s_timestep_and_need_the_progress():
    from pds_nerfstudio.guidance.options import GuidanceOptions

    class Prior:  # what GuidanceOptions needs of a prior (GuidancePrior)
        alphas_cumprod = ABAR

        def eps_fn(self, guidance_scale):
            return linear_eps_fn(cond_dim=1)

        def text_embeddings(self, prompts):
            return torch.full((1, 1), float(len(prompts[0])), dtype=DTYPE)

    options = GuidanceOptions("a red sphere", "a blue sphere", timestep_schedule="annealed")
    x0_tgt, x0_src = torch.randn(1, 4, 2, 2, dtype=DTYPE), torch.randn(1, 4, 2, 2, dtype=DTYPE)
    for k in (0, 7, 19):
        result = options.guidance_gradient(Prior(), x0_tgt, x0_src, torch.Generator().manual_seed(k), (k, 20))
        assert result.t.tolist() == [2 * annealed_subset_index(k, 20, 500, (0.02, 0.98))]
    with pytest.raises(ValueError, match="annealed"):
        options.guidance_gradient(Prior(), x0_tgt, x0_src, None)
