"""The guidance options every editor shares (scenes, `pds-edit-image`, the coming SVG editor), their checks, and
the one call of :func:`pds_nerfstudio.guidance.guidance_gradient` made from them.

Options are named by their field; each command line spells them under its own prefix (tyro's rule: the field
name with dashes), which the caller passes to :meth:`GuidanceOptions.validate_guidance`: `--pipeline.` for `ns-train`,
`--` for `pds-edit-image`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Literal, Protocol, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from pds_nerfstudio.guidance.gradients import EpsFn, GuidanceOutput, guidance_gradient
from pds_nerfstudio.guidance.timesteps import annealed_timesteps, subset_index_range


class GuidancePrior(Protocol):
    """What the guidance needs of a diffusion prior (the Stable Diffusion prior, the toy prior)."""

    alphas_cumprod: Float[Tensor, "num_train_timesteps"]

    def eps_fn(self, guidance_scale: float) -> EpsFn: ...

    def text_embeddings(self, prompts: Sequence[str]) -> Tensor: ...


def flag(option_prefix: str, name: str) -> str:
    """A field's command-line spelling under `option_prefix` (tyro's: dashes for underscores)."""
    return option_prefix + name.replace("_", "-")


def validate_guidance_scale(guidance_scale: float, option: str | None = None) -> None:
    """Refuse a classifier-free guidance weight <= 0 (or not finite) before anything loads; the error names the
    command-line `option` that sets it, where there is one."""
    if not (guidance_scale > 0 and guidance_scale != float("inf")):
        where = f": set {option}" if option is not None else ""
        raise ValueError(f"guidance scale must be a finite number > 0, got {guidance_scale}{where}")


def validate_prompts(source: str, target: str, option_prefix: str, needs_source: bool = True) -> None:
    """Refuse an empty target (or, where the method compares two prompts, source) prompt; warn when equal.

    Raises:
        ValueError: a prompt is empty or whitespace, naming the option that sets it.
    """
    if not target.strip():
        raise ValueError(f"target prompt is empty: set {flag(option_prefix, 'target_prompt')}")
    if needs_source and not source.strip():
        raise ValueError(f"source prompt is empty: set {flag(option_prefix, 'source_prompt')} (it describes the input)")
    if needs_source and source.strip() == target.strip():
        warnings.warn(
            f"source and target prompts are identical ({target!r}): the edit direction is zero, "
            "so the result will stay close to the input",
            stacklevel=2,
        )


@dataclass
class GuidanceOptions:
    """The guidance of an edit: the prompts, the method and its weighting, the guidance weight, the timesteps.
    A scene edit's pipeline config is one (its stage 1); `pds-edit-image` builds one from its own options."""

    source_prompt: str = ""
    """Text that describes the scene as it is (the source branch of PDS and DDS)."""
    target_prompt: str = ""
    """Text that describes the edited scene."""
    method: Literal["pds", "sds", "dds"] = "pds"
    """Guidance of stage 1: PDS, or the SDS and DDS baselines."""
    weighting: Literal["authors", "paper", "dreamcatalyst"] = "authors"
    """PDS weighting: the authors' code (z_tgt - z_src) or the paper's Eq. 16 (same direction), or DreamCatalyst's
    weights of Eq. 16's two terms (with `timestep-schedule annealed`, their recipe)."""
    guidance_scale: float = 100.0
    """Classifier-free guidance of stage 1 (the authors use 30 to 100 depending on the edit)."""
    min_step_ratio: float = 0.02
    """Lowest timestep of stage 1, as a fraction of the subset of diffusion steps."""
    max_step_ratio: float = 0.98
    """Highest timestep of stage 1, as a fraction of the subset of diffusion steps."""
    num_subset_steps: int = 500
    """Size S of the timestep subset tau_i = i * T / S; t' = tau_{i-1} (SPEC step 3)."""
    timestep_schedule: Literal["random", "annealed"] = "random"
    """How each iteration's timestep is chosen: `random`, uniform on the ratio range (the paper's); `annealed`,
    DreamCatalyst's deterministic schedule, falling linearly from the top of the range to its bottom over the
    stage (high noise first, for the edit's shape; low noise last, for its details)."""

    @property
    def needs_source(self) -> bool:
        """PDS and DDS compare the target with the source (prompt and latent); SDS has no source branch."""
        return self.method != "sds"

    def guidance_options(self) -> GuidanceOptions:
        """A copy of these options alone (of a pipeline config that is one, without the rest of its fields)."""
        return GuidanceOptions(**{option.name: getattr(self, option.name) for option in fields(GuidanceOptions)})

    def validate_guidance(self, option_prefix: str) -> None:
        """Every check that needs no weights; a ValueError names the option under `option_prefix`."""
        validate_prompts(self.source_prompt, self.target_prompt, option_prefix, needs_source=self.needs_source)
        validate_guidance_scale(self.guidance_scale, flag(option_prefix, "guidance_scale"))
        if self.num_subset_steps < 1:
            raise ValueError(f"{flag(option_prefix, 'num_subset_steps')} must be >= 1, got {self.num_subset_steps}")
        ratios = f"{flag(option_prefix, 'min_step_ratio')} and {flag(option_prefix, 'max_step_ratio')}"
        subset_index_range(self.num_subset_steps, (self.min_step_ratio, self.max_step_ratio), option=ratios)

    def guidance_gradient(
        self,
        prior: GuidancePrior,
        x0_tgt: Float[Tensor, "batch *latent"],
        x0_src: Float[Tensor, "batch *latent"] | None,
        generator: torch.Generator | None,
        progress: tuple[int, int] | None = None,
    ) -> GuidanceOutput:
        """The guidance gradient at `x0_tgt` (from the source latent `x0_src`, None for SDS), its noises (and
        random timesteps) drawn from `generator` (SPEC steps 2-7); `progress` = (k, K), iteration k of the K of
        the stage, sets the annealed schedule's timestep."""
        t = t_prev = None
        if self.timestep_schedule == "annealed":
            if progress is None:
                raise ValueError("the annealed timestep schedule needs the iteration and the stage's length")
            t, t_prev = annealed_timesteps(*progress, prior.alphas_cumprod.shape[0], self.num_subset_steps,
                                           (self.min_step_ratio, self.max_step_ratio), x0_tgt.shape[0], x0_tgt.device)  # fmt: skip
        return guidance_gradient(
            self.method,
            x0_tgt.detach(),
            prior.eps_fn(self.guidance_scale),
            prior.alphas_cumprod,
            prior.text_embeddings([self.target_prompt]),
            x0_src if self.needs_source else None,
            prior.text_embeddings([self.source_prompt]) if self.needs_source else None,
            weighting=self.weighting,
            t=t,
            t_prev=t_prev,
            generator=generator,
            num_subset_steps=self.num_subset_steps,
            ratio_range=(self.min_step_ratio, self.max_step_ratio),
        )
