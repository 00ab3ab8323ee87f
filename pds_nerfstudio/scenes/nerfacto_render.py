"""Whole-view rendering of a nerfacto scene, with gradient, chunk by chunk (deferred back-propagation)."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import ContextManager, Dict, Tuple

import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.model_components.losses import distortion_loss, interlevel_loss
from nerfstudio.models.nerfacto import NerfactoModel


@dataclass
class ViewRender:
    """A rendered view and nerfacto's proposal losses averaged over its rays."""

    rgb: Float[Tensor, "height width 3"]
    interlevel_loss: Float[Tensor, ""]
    distortion_loss: Float[Tensor, ""]


def render_view(
    model: NerfactoModel, cameras: Cameras, view: int, chunk_size: int, deferred: bool = True
) -> ViewRender:
    """Renders every pixel of camera `view`, chunk by chunk, differentiably.

    The rays carry `view` as camera index, so nerfacto's appearance embedding and camera
    optimiser see the right view, as in ray-batch training. In training mode the proposal
    networks' interlevel and distortion losses are returned too: with them the edit reaches the
    proposal networks, which the RGB gradient alone does not train (nerfacto's own losses).

    deferred: keep no chunk's autograd graph; back-propagation re-renders one chunk at a time
    (activation checkpointing with the forward's RNG state, so jittered samples are identical).
    Same gradient as the plain path (deferred=False, every chunk's graph kept), with the memory
    of one chunk. A view of one chunk keeps its graph either way: re-rendering it would cost a
    forward pass and hold the same one chunk's graph during back-propagation.
    """
    rays = cameras.generate_rays(camera_indices=view, keep_shape=True)
    height, width = rays.shape[:2]
    flat = rays.flatten()
    num_rays = len(flat)
    deferred = deferred and num_rays > chunk_size
    rgb_chunks = []
    interlevel = torch.zeros((), device=flat.origins.device)
    distortion = torch.zeros((), device=flat.origins.device)
    for start in range(0, num_rays, chunk_size):
        chunk = flat[start : start + chunk_size]
        inputs = (model, chunk.origins, chunk.directions, chunk.pixel_area, chunk.camera_indices, chunk.metadata)
        if deferred and torch.is_grad_enabled():
            contexts = functools.partial(_replay_sampler_state, getattr(model, "proposal_sampler", None))
            rgb, chunk_interlevel, chunk_distortion = checkpoint(
                _render_rays, *inputs, use_reentrant=False, context_fn=contexts
            )
        else:
            rgb, chunk_interlevel, chunk_distortion = _render_rays(*inputs)
        rgb_chunks.append(rgb)
        share = len(chunk) / num_rays
        interlevel = interlevel + share * chunk_interlevel
        distortion = distortion + share * chunk_distortion
    rgb = torch.cat(rgb_chunks).view(height, width, 3)
    return ViewRender(rgb=rgb, interlevel_loss=interlevel, distortion_loss=distortion)


class _ReplaySamplerState:
    """Re-runs a chunk with the proposal sampler's state of its first run, then puts the current one back.

    nerfstudio 1.1.5's ProposalNetworkSampler decides from `_steps_since_update` whether the
    proposal networks run with gradient, and resets it when they do: a recomputation must see
    the value of the original forward (else it saves other tensors and checkpointing fails) and
    must leave the current value as it found it. Re-entrant: each backward through the graph
    (retain_graph) recomputes again.
    """

    def __init__(self, sampler: object) -> None:
        self.sampler = sampler
        self.value_at_forward = sampler._steps_since_update  # type: ignore[attr-defined]
        self.current: list[int] = []

    def __enter__(self) -> None:
        self.current.append(self.sampler._steps_since_update)  # type: ignore[attr-defined]
        self.sampler._steps_since_update = self.value_at_forward  # type: ignore[attr-defined]

    def __exit__(self, *exc: object) -> None:
        self.sampler._steps_since_update = self.current.pop()  # type: ignore[attr-defined]


def _replay_sampler_state(sampler: object) -> Tuple[ContextManager, ContextManager]:
    """Checkpoint contexts (forward, recomputation) for nerfacto's proposal sampler; see _ReplaySamplerState."""
    if sampler is None or not hasattr(sampler, "_steps_since_update"):
        return contextlib.nullcontext(), contextlib.nullcontext()
    return contextlib.nullcontext(), _ReplaySamplerState(sampler)


def _render_rays(
    model: NerfactoModel,
    origins: Tensor,
    directions: Tensor,
    pixel_area: Tensor,
    camera_indices: Tensor,
    metadata: Dict[str, Tensor],
) -> Tuple[Tensor, Tensor, Tensor]:
    """RGB and proposal losses of some rays. A new RayBundle each call: nerfacto's camera
    optimiser and collider modify the bundle in place, and a re-run must start from the same rays."""
    bundle = RayBundle(
        origins=origins, directions=directions, pixel_area=pixel_area, camera_indices=camera_indices, metadata=dict(metadata)
    )
    outputs = model(bundle)
    if "weights_list" not in outputs:
        zero = torch.zeros((), device=origins.device)
        return outputs["rgb"], zero, zero
    weights, samples = outputs["weights_list"], outputs["ray_samples_list"]
    return outputs["rgb"], interlevel_loss(weights, samples), distortion_loss(weights, samples)
