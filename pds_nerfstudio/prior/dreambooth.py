"""DreamBooth with a LoRA: the prior's UNet learns a scene's images under an instance prompt ("a photo of a sks
man"), optionally keeping what its class prompt ("a photo of a man") meant through prior preservation.

Plain torch on a loaded :class:`pds_nerfstudio.prior.stable_diffusion.DiffusionPrior`: the images come in as latents,
the loss is the prior's own denoising objective (epsilon or v prediction, as its scheduler says), and only the
LoRA's parameters train (`pds_nerfstudio.prior.lora`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from pds_nerfstudio.prior.lora import lora_config
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior


@dataclass
class PersonalizeOptions:
    """How the LoRA is trained."""

    steps: int = 400
    """Optimiser steps."""
    rank: int = 4
    """LoRA rank of every attention projection of the UNet."""
    learning_rate: float = 1e-4
    """AdamW learning rate of the LoRA parameters."""
    batch_size: int = 1
    """Instance images per step (and as many class images with prior preservation)."""
    prior_loss_weight: float = 1.0
    """Weight of the class images' loss (prior preservation), when there are class images."""
    seed: int = 0
    """Seed of the image order, timesteps and noises."""


def denoising_loss(
    prior: DiffusionPrior,
    latents: Float[Tensor, "batch 4 h w"],
    text: Float[Tensor, "batch 77 dim"],
    timesteps: Tensor,
    noise: Float[Tensor, "batch 4 h w"],
) -> Float[Tensor, "batch"]:
    """Per-sample mean squared error of the prior's prediction at `timesteps` (its training objective)."""
    abar = prior.alphas_cumprod.to(latents.device)[timesteps].to(latents.dtype)[:, None, None, None]
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    target = noise if prior.prediction_type == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * latents
    prediction = prior.unet(noisy.to(prior.dtype), timesteps, text.to(prior.dtype)).sample.to(latents.dtype)
    return (prediction - target).square().mean(dim=(1, 2, 3))


def personalize(
    prior: DiffusionPrior,
    instance_latents: Float[Tensor, "n 4 h w"],
    instance_prompt: str,
    options: PersonalizeOptions,
    class_latents: Optional[Float[Tensor, "m 4 h w"]] = None,
    class_prompt: Optional[str] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
) -> List[float]:
    """Adds a LoRA to `prior.unet` and trains it; returns the loss of every step. The rest stays frozen."""
    unet = prior.unet
    unet.add_adapter(lora_config(options.rank), adapter_name="scene")
    parameters = [parameter for parameter in unet.parameters() if parameter.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    device = instance_latents.device
    with torch.no_grad():
        instance_text = prior.text_embeddings([instance_prompt])
        class_text = prior.text_embeddings([class_prompt]) if class_latents is not None and class_prompt else None
    losses = []
    for step in range(options.steps):
        loss = _batch_loss(prior, instance_latents, instance_text, options.batch_size, generator, device)
        if class_text is not None:
            assert class_latents is not None
            class_loss = _batch_loss(prior, class_latents, class_text, options.batch_size, generator, device)
            loss = loss + options.prior_loss_weight * class_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
        if on_step is not None:
            on_step(step, losses[-1])
    unet.requires_grad_(False)
    return losses


def _batch_loss(
    prior: DiffusionPrior, latents: Tensor, text: Tensor, batch_size: int, generator: torch.Generator, device
) -> Tensor:
    index = torch.randint(len(latents), (batch_size,), generator=generator)
    timesteps = torch.randint(prior.num_train_timesteps, (batch_size,), generator=generator).to(device)
    noise = torch.randn(latents[index].shape, generator=generator).to(device)
    return denoising_loss(prior, latents[index], text.expand(batch_size, -1, -1), timesteps, noise).mean()


@torch.no_grad()
def held_denoising_loss(
    prior: DiffusionPrior, latents: Float[Tensor, "n 4 h w"], prompt: str, num_timesteps: int = 10, seed: int = 0
) -> float:
    """The prior's denoising loss on `latents` under `prompt`, averaged over `num_timesteps` evenly spaced timesteps
    and a noise drawn once per image and timestep from `seed`: the same draws for any prior, so that a base model
    and its LoRA are compared on equal terms."""
    text = prior.text_embeddings([prompt])
    generator = torch.Generator().manual_seed(seed)
    spacing = prior.num_train_timesteps // num_timesteps
    total = 0.0
    for t in range(spacing // 2, prior.num_train_timesteps, spacing):
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        timesteps = torch.full((len(latents),), t, device=latents.device)
        total += float(denoising_loss(prior, latents, text.expand(len(latents), -1, -1), timesteps, noise).mean())
    return total / len(range(spacing // 2, prior.num_train_timesteps, spacing))
