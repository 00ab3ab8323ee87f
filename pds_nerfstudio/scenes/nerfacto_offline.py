"""Nerfacto that starts offline: its LPIPS metric is built on first use, not at start-up; whose field can hold an
edit's source scene outside its region (:mod:`pds_nerfstudio.scenes.nerfacto_hold`); and whose still renders say which
stretch of each ray they come from (`depth_near`, `depth_far`), where the edit region is read.

nerfstudio 1.1.5's ``NerfactoModel.populate_modules`` builds torchmetrics' LPIPS, which
downloads AlexNet weights, so stock nerfacto cannot even start on a machine without internet.
LPIPS is an evaluation metric only; training never needs it.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import ContextManager, Dict, Iterator, Type

import torch
from jaxtyping import Float
from torch import Tensor, nn

import nerfstudio.models.nerfacto as nerfacto_module
from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig

from pds_nerfstudio.scenes.base import ExtraOutputs
from pds_nerfstudio.scenes.nerfacto_hold import HoldableNerfactoField


class DeferredLPIPS(nn.Module):
    """torchmetrics' LPIPS, built when first called; NaN (with one warning) when it cannot be.

    Holds no parameters, so checkpoints carry no AlexNet weights (stock nerfacto's do).
    """

    def __init__(self, **lpips_kwargs: object) -> None:
        super().__init__()
        self._lpips_kwargs = lpips_kwargs
        self._metric: list[nn.Module] = []  # a list keeps it out of state_dict and .to()
        self._unavailable = False

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._unavailable:
            return torch.tensor(float("nan"))
        if not self._metric:
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            try:
                self._metric.append(LearnedPerceptualImagePatchSimilarity(**self._lpips_kwargs))
            except Exception as error:  # offline: torchvision cannot fetch AlexNet weights
                self._unavailable = True
                warnings.warn(f"LPIPS is reported as NaN: its AlexNet weights could not be loaded ({error}).")
                return torch.tensor(float("nan"))
        metric = self._metric[0].to(preds.device)
        return metric(preds, target)


@contextlib.contextmanager
def swapped(module: ModuleType, name: str, value: object) -> Iterator[None]:
    """`module.name` is `value` inside the block; restored on exit. nerfstudio 1.1.5's `populate_modules` finds the
    classes it builds in its module's namespace (and LPIPS's, imported inside it, in torchmetrics')."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def lpips_deferred() -> ContextManager[None]:
    """Makes nerfacto's ``populate_modules`` build :class:`DeferredLPIPS` instead of LPIPS."""
    import torchmetrics.image.lpip as lpip_module

    return swapped(lpip_module, "LearnedPerceptualImagePatchSimilarity", DeferredLPIPS)


def holdable_field() -> ContextManager[None]:
    """Makes nerfacto's ``populate_modules`` build a :class:`HoldableNerfactoField` (the same parameters)."""
    return swapped(nerfacto_module, "NerfactoField", HoldableNerfactoField)


DEPTH_NEAR, DEPTH_FAR = "depth_near", "depth_far"
STRETCH_WEIGHTS = (0.2, 0.8)
"""The accumulated weights at which a still render's stretch of each ray starts and ends (nerfacto's depth is the
median, at 0.5). Measured on the white cube's 2,000-iteration reconstructions (seeds 0 and 1) and the red sphere's
(2026-12-07): the fused region read as its largest value along the stretch holds 94%, 93% and 99.7% of the object's
pixels in every training view (worst views 89%, 89%, 98%), read at the median depth 82%, 89%, 98.5% (worst 45%, 69%,
97%); of the other pixels it holds 3.5%, 3.5%, 1.0% against 2.5%, 2.4%, 0.5%. 0.1 and 0.9: 94%, 92%, 99.8%."""


def depth_at_weight(weights: Float[Tensor, "*batch samples 1"], ray_samples: RaySamples,
                    split: float) -> Float[Tensor, "*batch 1"]:  # fmt: skip
    """The distance along each ray where its accumulated weight reaches `split` (the last sample's where it never does).
    nerfstudio 1.1.5's median depth (`model_components/renderers.py:DepthRenderer`) at `split` instead of 0.5."""
    steps = (ray_samples.frustums.starts + ray_samples.frustums.ends) / 2
    cumulative = torch.cumsum(weights[..., 0], dim=-1)
    index = torch.searchsorted(cumulative, torch.full((*weights.shape[:-2], 1), split, device=weights.device))
    return torch.gather(steps[..., 0], -1, index.clamp(0, steps.shape[-2] - 1))


@dataclass
class OfflineNerfactoModelConfig(NerfactoModelConfig):
    """Nerfacto, unchanged but for an LPIPS metric that never downloads at start-up."""

    _target: Type = field(default_factory=lambda: OfflineNerfactoModel)


class OfflineNerfactoModel(ExtraOutputs, NerfactoModel):
    """Nerfacto whose LPIPS metric is a :class:`DeferredLPIPS`, whose renders take an edit's extra outputs, and whose
    field is a :class:`~pds_nerfstudio.scenes.nerfacto_hold.HoldableNerfactoField` (the same parameters)."""

    config: OfflineNerfactoModelConfig

    def populate_modules(self) -> None:
        with lpips_deferred(), holdable_field():
            super().populate_modules()

    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        """nerfacto's outputs; a still render's (evaluation mode) also `depth_near` and `depth_far`: where each ray's
        accumulated weight reaches :data:`STRETCH_WEIGHTS` (training renders are left as nerfacto's)."""
        if self.training:
            return super().get_outputs(ray_bundle)
        self.field.rendered = []
        try:
            outputs = super().get_outputs(ray_bundle)
            ray_samples, density = self.field.rendered[-1]
        finally:
            self.field.rendered = None
        weights = ray_samples.get_weights(density)
        outputs[DEPTH_NEAR], outputs[DEPTH_FAR] = (depth_at_weight(weights, ray_samples, w) for w in STRETCH_WEIGHTS)
        return outputs
