"""A NeRF that holds its source scene outside an edit region: a frozen copy of the source field renders there.

Splats hold the outside by part (the Gaussians centred outside the region take no gradient). A NeRF has no parts:
nerfacto's hash grid and colour network are shared by all of space, so stage 1's guidance and stage 2's training
inside the region move the field everywhere. Instead the edit keeps a frozen copy of the field as it was where the
edit started, and at every sample point the density and colour are

    sigma = w(x) * sigma_edited + (1 - w(x)) * sigma_source,   c = w(x) * c_edited + (1 - w(x)) * c_source,

with w(x) the region's value at the sample's position (0 outside it: exactly the source; soft at its edge). The
copy is a submodule of the model (`source_hold.*` in its checkpoints), so `ns-render` and `ns-viewer` of the run
render what the edit trained. The proposal networks stay the edited model's: they only place the samples.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from nerfstudio.cameras.rays import RaySamples
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.nerfacto_field import NerfactoField

from pds_nerfstudio.scenes.base import PointValue

FieldOutputs = Dict[FieldHeadNames, Tensor]

HOLD_PREFIX = "source_hold."
"""Where a model's held source field sits in its state dict (under the pipeline's `_model.`)."""


class HoldableNerfactoField(NerfactoField):
    """nerfstudio 1.1.5's NerfactoField, whose outputs pass through `hold` when one is set (the edit's source outside
    its region, :class:`SourceHold`). Same parameters and state dict: every nerfacto checkpoint loads into it.

    nerfacto calls `self.field.forward(...)` itself (nerfstudio 1.1.5 models/nerfacto.py:get_outputs), which a
    forward hook would not see, so the hold is a subclass's forward."""

    hold: Optional[Callable[[RaySamples, FieldOutputs], FieldOutputs]] = None
    rendered: Optional[List[Tuple[RaySamples, Tensor]]] = None
    """Where set (a list), each call appends its samples and the densities it returns (held, as rendered)."""

    def forward(self, ray_samples: RaySamples, compute_normals: bool = False) -> FieldOutputs:
        outputs = super().forward(ray_samples, compute_normals=compute_normals)
        outputs = outputs if self.hold is None else self.hold(ray_samples, outputs)
        if self.rendered is not None:
            self.rendered.append((ray_samples, outputs[FieldHeadNames.DENSITY]))
        return outputs


class SourceHold(nn.Module):
    """A frozen copy of a field, and the region inside which the edited field renders instead (module docstring)."""

    def __init__(self, field: NerfactoField) -> None:
        super().__init__()
        self.field = copy.deepcopy(field)
        self.field.hold = None  # type: ignore[attr-defined]  # the copy renders the source alone
        self.field.requires_grad_(False)
        self.region: Optional[PointValue] = None
        """The edit region's value at points in the scene's coordinates (None: the edited field everywhere)."""

    def forward(self, ray_samples: RaySamples, edited: FieldOutputs) -> FieldOutputs:
        if self.region is None:
            return edited
        positions = ray_samples.frustums.get_positions().detach()
        with torch.no_grad():
            weight = self.region(positions.reshape(-1, 3)).reshape(*positions.shape[:-1], 1).to(positions)
            source = self.field.forward(ray_samples)
        held = dict(edited)
        for head in (FieldHeadNames.DENSITY, FieldHeadNames.RGB):
            held[head] = weight * edited[head] + (1 - weight) * source[head].to(edited[head])
        return held


def keep_source(model: nn.Module) -> None:
    """`model` keeps a frozen copy of its field as it is (`model.source_hold`), through which the field's outputs pass
    from now on (as the edited field alone until the hold has a region). The field must be a HoldableNerfactoField."""
    model.source_hold = SourceHold(model.field)
    model.field.hold = model.source_hold.forward  # a bound method: the copy is registered once, as the model's


def keeps_source(model: nn.Module) -> bool:
    """Whether `model` keeps a held source field."""
    return isinstance(getattr(model, "source_hold", None), SourceHold)
