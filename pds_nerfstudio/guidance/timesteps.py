"""Timesteps on the non-consecutive subset tau_i = i * (T // S) (SPEC step 3): drawn uniformly (the paper's),
or annealed from high to low noise over a stage (DreamCatalyst's deterministic schedule)."""

from __future__ import annotations

import math

import torch
from jaxtyping import Int
from torch import Tensor


def subset_index_range(
    num_subset_steps: int, ratio_range: tuple[float, float], option: str = "ratio_range"
) -> tuple[int, int]:
    """Half-open range [low, high) of subset indices i for a ratio range of S (`option`: how errors name it).

    low is floor(min * S), raised to 1 so that tau_{i-1} exists; high is floor(max * S).
    """
    low_ratio, high_ratio = ratio_range
    if not 0.0 <= low_ratio < high_ratio <= 1.0:
        raise ValueError(f"{option} must satisfy 0 <= min < max <= 1, got {ratio_range}")
    low = max(math.floor(low_ratio * num_subset_steps), 1)
    high = math.floor(high_ratio * num_subset_steps)
    if high <= low:
        raise ValueError(
            f"{option} {ratio_range} of {num_subset_steps} subset steps contains no index "
            f"i >= 1 (need one so that t_prev = tau_(i-1) >= 0); widen the range"
        )
    return low, high


def sample_timesteps(
    num_train_timesteps: int = 1000,
    num_subset_steps: int = 500,
    ratio_range: tuple[float, float] = (0.02, 0.98),
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Int[Tensor, "batch"], Int[Tensor, "batch"]]:
    """Draw (t, t_prev) = (tau_i, tau_{i-1}) with tau_i = i * (T // S).

    i is uniform on the integers of [floor(min * S), floor(max * S)), i.e. [10, 490) by
    default (supplement S.3), and never below 1. One independent i per batch item.
    """
    if not 1 <= num_subset_steps <= num_train_timesteps:
        raise ValueError(
            f"num_subset_steps must be in [1, num_train_timesteps={num_train_timesteps}], "
            f"got {num_subset_steps}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    low, high = subset_index_range(num_subset_steps, ratio_range)
    stride = num_train_timesteps // num_subset_steps
    sample_device = generator.device if generator is not None else device
    i = torch.randint(low, high, (batch_size,), generator=generator, device=sample_device)
    i = i.to(device) if device is not None else i
    return i * stride, (i - 1) * stride


def annealed_subset_index(iteration: int, num_iterations: int, num_subset_steps: int, ratio_range: tuple[float, float]) -> int:
    """Subset index i of `iteration` k of K = `num_iterations` under DreamCatalyst's deterministic schedule:
    i = floor(low + (high - low) (K - k) / K), falling linearly from high (k = 0) to just above low (k = K - 1),
    with [low, high) the range that `sample_timesteps` draws from (Kim et al. 2025, `dc_timestep_sampling`: the
    same rule over their index range). High noise first shapes the edit, low noise last keeps the details.
    Capped at S - 1 so that tau_i < T when the range reaches max = 1."""
    if num_iterations < 1 or not 0 <= iteration < num_iterations:
        raise ValueError(f"iteration must be in [0, {num_iterations}), got {iteration}")
    low, high = subset_index_range(num_subset_steps, ratio_range)
    return min(low + (high - low) * (num_iterations - iteration) // num_iterations, num_subset_steps - 1)


def annealed_timesteps(
    iteration: int,
    num_iterations: int,
    num_train_timesteps: int = 1000,
    num_subset_steps: int = 500,
    ratio_range: tuple[float, float] = (0.02, 0.98),
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> tuple[Int[Tensor, "batch"], Int[Tensor, "batch"]]:
    """(t, t_prev) = (tau_i, tau_{i-1}) of :func:`annealed_subset_index`, the same for every batch item."""
    i = annealed_subset_index(iteration, num_iterations, num_subset_steps, ratio_range)
    stride = num_train_timesteps // num_subset_steps
    t = torch.full((batch_size,), i * stride, dtype=torch.long, device=device)
    return t, t - stride
