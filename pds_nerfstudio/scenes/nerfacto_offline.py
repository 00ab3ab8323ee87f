"""Nerfacto that starts offline: its LPIPS metric is built on first use, not at start-up; and whose field can hold
an edit's source scene outside its region (:mod:`pds_nerfstudio.scenes.nerfacto_hold`).

nerfstudio 1.1.5's ``NerfactoModel.populate_modules`` builds torchmetrics' LPIPS, which
downloads AlexNet weights, so stock nerfacto cannot even start on a machine without internet.
LPIPS is an evaluation metric only; training never needs it.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from types import ModuleType
from typing import ContextManager, Iterator, Type

import torch
from torch import nn

import nerfstudio.models.nerfacto as nerfacto_module
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
