"""Nerfacto that starts offline: its LPIPS metric is built on first use, not at start-up.

nerfstudio 1.1.5's ``NerfactoModel.populate_modules`` builds torchmetrics' LPIPS, which
downloads AlexNet weights, so stock nerfacto cannot even start on a machine without internet.
LPIPS is an evaluation metric only; training never needs it.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Type

import torch
from torch import nn

from nerfstudio.models.nerfacto import NerfactoModel, NerfactoModelConfig

from pds_nerfstudio.scenes.base import ExtraOutputs


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
def lpips_deferred() -> Iterator[None]:
    """Makes nerfacto's ``populate_modules`` build :class:`DeferredLPIPS` instead of LPIPS.

    nerfstudio 1.1.5 imports the class inside ``populate_modules``
    (``from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity``), so the
    module attribute is what it finds; it is restored on exit.
    """
    import torchmetrics.image.lpip as lpip_module

    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = DeferredLPIPS  # type: ignore[misc]
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = original  # type: ignore[misc]


@dataclass
class OfflineNerfactoModelConfig(NerfactoModelConfig):
    """Nerfacto, unchanged but for an LPIPS metric that never downloads at start-up."""

    _target: Type = field(default_factory=lambda: OfflineNerfactoModel)


class OfflineNerfactoModel(ExtraOutputs, NerfactoModel):
    """Nerfacto whose LPIPS metric is a :class:`DeferredLPIPS`, and whose renders take an edit's extra outputs."""

    config: OfflineNerfactoModelConfig

    def populate_modules(self) -> None:
        with lpips_deferred():
            super().populate_modules()
