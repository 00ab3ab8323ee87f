"""DDIM SDEdit: step schedule, closed form on Gaussian data, statistics, reproducibility."""

from __future__ import annotations

import pytest
import torch
from analytic import DTYPE, ddim_step_factor, gaussian_eps_fn, sd_alphas_cumprod

from pds_nerfstudio.guidance import ddim_timesteps, sample_sdedit_steps, sdedit

ABAR = sd_alphas_cumprod()
S = 0.5
EPS_FN = gaussian_eps_fn(ABAR, S)


def closed_form_factor(num_steps: int, num_inference_steps: int = 20) -> torch.Tensor:
    """Product of the per-step DDIM factors from tau_{k-1} down to clean (abar = 1)."""
    taus = list(range(0, 1000, 1000 // num_inference_steps))[:num_steps]
    abars = [ABAR[tau] for tau in reversed(taus)] + [torch.tensor(1.0, dtype=DTYPE)]
    factor = torch.tensor(1.0, dtype=DTYPE)
    for a, a_prev in zip(abars[:-1], abars[1:]):
        factor = factor * ddim_step_factor(a, a_prev, S)
    return factor


def test_ddim_timesteps_leading_spacing():
    assert torch.equal(ddim_timesteps(1000, 20), torch.arange(0, 1000, 50))
    assert ddim_timesteps(1000, 20).dtype == torch.long
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 0)


def test_zero_steps_returns_input_unchanged():
    x0 = torch.randn(2, 4, 3, 3, dtype=DTYPE)

    def eps_fn(x_t, t, cond):
        raise AssertionError("no denoising step expected for k = 0")

    out = sdedit(x0, eps_fn, ABAR, torch.zeros_like(x0), num_steps=0)
    assert torch.equal(out, x0) and out.data_ptr() != x0.data_ptr()


@pytest.mark.parametrize("num_steps", [1, 2, 4, 20])
def test_ddim_matches_gaussian_closed_form(num_steps):
    # Each DDIM step is affine on Gaussian data: y - mu = F (x_t0 - sqrt(abar_t0) mu), F the
    # product of ddim_step_factor. float64, only rounding: 1e-10.
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, 4, 4, generator=gen, dtype=DTYPE)
    x0 = mu + torch.randn(3, 4, 4, 4, generator=gen, dtype=DTYPE)
    noise = torch.randn(3, 4, 4, 4, generator=gen, dtype=DTYPE)
    a0 = ABAR[50 * (num_steps - 1)]
    x_t0 = a0.sqrt() * x0 + (1 - a0).sqrt() * noise
    expected = mu + closed_form_factor(num_steps) * (x_t0 - a0.sqrt() * mu)
    out = sdedit(x0, EPS_FN, ABAR, mu, num_steps=num_steps, noise=noise)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_output_statistics_match_theory():
    # y = mu + F sqrt(a0)(x0 - mu) + F sqrt(1 - a0) noise. n = 4000 noises of 16 entries:
    # mean within 5 standard errors per entry; pooled std within 2% (its standard error is
    # 1/sqrt(2 * 64000) = 0.3%).
    n, k = 4000, 4
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(1, 16, 1, 1, generator=gen, dtype=DTYPE).expand(n, -1, -1, -1)
    x0 = (mu[:1] + torch.randn(1, 16, 1, 1, generator=gen, dtype=DTYPE)).expand(n, -1, -1, -1)
    out = sdedit(x0, EPS_FN, ABAR, mu, num_steps=k, generator=gen)
    a0, factor = ABAR[50 * (k - 1)], closed_form_factor(k)
    mean_theory = mu[0] + factor * a0.sqrt() * (x0[0] - mu[0])
    std_theory = factor * (1 - a0).sqrt()
    assert ((out.mean(0) - mean_theory).abs() < 5 * std_theory / n**0.5).all()
    assert abs(float((out - out.mean(0)).pow(2).mean().sqrt() / std_theory) - 1) < 0.02


def test_sdedit_generator_reproducible():
    x0 = torch.randn(2, 4, 3, 3, dtype=DTYPE)
    mu = torch.zeros_like(x0)

    def run(seed):
        return sdedit(x0, EPS_FN, ABAR, mu, num_steps=3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(7), run(7)) and not torch.equal(run(7), run(8))


def test_sample_sdedit_steps_range_and_reproducibility():
    draws = [sample_sdedit_steps(generator=torch.Generator().manual_seed(seed)) for seed in range(200)]
    assert set(draws) == {0, 1, 2, 3, 4}  # [round(0 * 20), round(0.2 * 20)] inclusive
    assert sample_sdedit_steps(generator=torch.Generator().manual_seed(3)) == draws[3]
    assert sample_sdedit_steps(20, (0.1, 0.1)) == 2
    for bad in [(0.3, 0.2), (-0.1, 0.2), (0.0, 1.5)]:
        with pytest.raises(ValueError):
            sample_sdedit_steps(20, bad)
    with pytest.raises(ValueError):
        sdedit(torch.zeros(1, 4, 2, 2), EPS_FN, ABAR, torch.zeros(1, 4, 2, 2), num_steps=21)


def _shipped_schedulers() -> dict[str, dict]:
    """The scheduler configs of the priors we ship and build (toy: the embedded one; tiny: tests')."""
    import json

    from pds_nerfstudio.synthetic.embedded_prior import EMBEDDED_TOY_PRIOR
    from pds_nerfstudio.synthetic.tiny_prior import SCHEDULER_CONFIG

    toy = json.loads((EMBEDDED_TOY_PRIOR / "scheduler" / "scheduler_config.json").read_text())
    no_offset = {**SCHEDULER_CONFIG, "steps_offset": 0, "set_alpha_to_one": True}
    return {"toy prior": {k: v for k, v in toy.items() if not k.startswith("_")}, "tiny prior": SCHEDULER_CONFIG,
            "steps_offset 0, set_alpha_to_one": no_offset}  # fmt: skip


@pytest.mark.parametrize("config", _shipped_schedulers().values(), ids=_shipped_schedulers().keys())
def test_ddim_step_and_timesteps_are_diffusers_ddim_scheduler(config: dict) -> None:
    from diffusers import DDIMScheduler

    from pds_nerfstudio.guidance.sdedit import ddim_step

    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(20)
    taus = ddim_timesteps(1000, 20, config["steps_offset"])
    assert torch.equal(taus.flip(0), scheduler.timesteps)  # diffusers runs them high to low
    abar, final = scheduler.alphas_cumprod.to(DTYPE), float(scheduler.final_alpha_cumprod)
    gen = torch.Generator().manual_seed(0)
    for j, t in enumerate(taus.tolist()):
        x, eps = torch.randn(2, 4, 3, 3, generator=gen, dtype=DTYPE), torch.randn(2, 4, 3, 3, generator=gen, dtype=DTYPE)
        theirs = scheduler.step(eps, t, x, eta=0.0).prev_sample
        ours = ddim_step(x, eps, abar[t], abar[taus[j - 1]] if j > 0 else abar.new_tensor(final))
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_steps", [1, 4, 20])
def test_sdedit_with_a_priors_settings_is_diffusers_ddim_loop(num_steps: int) -> None:
    """The last k of diffusers' 20 DDIM steps from x0 noised to the first of them, on SD's own scheduler config
    (steps_offset 1, final abar = abar_0), against sdedit given that prior's ddim_settings."""
    from diffusers import DDIMScheduler

    from pds_nerfstudio.synthetic.tiny_prior import SCHEDULER_CONFIG

    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    scheduler.set_timesteps(20)
    settings = {"steps_offset": 1, "final_alpha_cumprod": float(scheduler.final_alpha_cumprod)}
    gen = torch.Generator().manual_seed(2)
    mu, x0, noise = (torch.randn(2, 4, 4, 4, generator=gen, dtype=DTYPE) for _ in range(3))
    timesteps = scheduler.timesteps[-num_steps:]
    x = scheduler.add_noise(x0, noise, timesteps[:1])
    for t in timesteps:
        x = scheduler.step(EPS_FN(x, t.view(1), mu), t, x, eta=0.0).prev_sample
    ours = sdedit(x0, EPS_FN, ABAR, mu, num_steps=num_steps, noise=noise, **settings)
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-6)


def test_a_steps_offset_that_passes_the_last_timestep_is_refused() -> None:
    assert ddim_timesteps(1000, 20, 49)[-1] == 999
    with pytest.raises(ValueError, match="steps_offset 50 puts the last of 20 DDIM steps past t = 999"):
        ddim_timesteps(1000, 20, 50)
