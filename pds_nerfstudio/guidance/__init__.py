"""Plain-torch guidance maths: PDS, SDS, DDS gradients and DDIM SDEdit (no nerfstudio, no diffusers)."""

from .coefficients import PosteriorCoefficients, pds_coefficients, posterior_coefficients
from .gradients import EpsFn, GuidanceOutput, guidance_gradient, surrogate_loss
from .sdedit import ddim_timesteps, sample_sdedit_steps, sdedit
from .timesteps import sample_timesteps

__all__ = [
    "EpsFn",
    "GuidanceOutput",
    "PosteriorCoefficients",
    "ddim_timesteps",
    "guidance_gradient",
    "pds_coefficients",
    "posterior_coefficients",
    "sample_sdedit_steps",
    "sample_timesteps",
    "sdedit",
    "surrogate_loss",
]
