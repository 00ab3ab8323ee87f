"""What a running edit may change while it trains: the viewer's prompts and guidance weight, a benchmark's render
scale. They start as the config says; the config itself is never written after set-up (it is what `config.yml`
holds and what a resumed run reads)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from pds_nerfstudio.guidance.options import GuidanceOptions


@dataclass
class LiveSettings:
    """The settings of the running edit, read by its stages at every step."""

    guidance: GuidanceOptions
    """Stage 1's guidance (the viewer changes its prompts and weight); stage 2 SDEdits towards its target prompt."""
    render_scale: float
    """Stage 1 renders at this fraction of the training resolution."""

    def with_prompts(self, source_prompt: str, target_prompt: str) -> None:
        self.guidance = replace(self.guidance, source_prompt=source_prompt, target_prompt=target_prompt)

    def with_guidance_scale(self, guidance_scale: float) -> None:
        self.guidance = replace(self.guidance, guidance_scale=guidance_scale)
