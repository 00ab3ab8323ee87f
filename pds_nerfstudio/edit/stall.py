"""A stalled edit is reported: stage 1 going on while the scene does not change.

On each stage-1 logging step the trainer records two readings: the norm of the gradient that reached the
scene's trainable parameters, and how much a fixed probe view's render changed since the previous logging
step. When either says "nothing moves" for `intervals` logging intervals in a row, :meth:`StallDetector.record`
returns one warning that names the likely causes and the options that address them (once per stall).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pds_nerfstudio.scenes.base import SceneAdapter

RENDER_TOLERANCE = 1e-6
"""A render whose pixels all moved by at most this much (far below one 8-bit level) did not change: the
parameters did not move (a learning rate at or near zero, frozen parameters, every step skipped)."""

def causes(learning_rate_options: str) -> tuple[str, ...]:
    """The likely causes of a stall, each with the options that address it (the scene kind's learning rates)."""
    return (
        "identical source and target prompts (PDS and DDS have no direction then): --pipeline.source-prompt, "
        "--pipeline.target-prompt, or the viewer's prompt fields",
        f"a learning rate at or near zero: {learning_rate_options}, a warm-up longer than the stage or a "
        "schedule decayed to nothing (the same groups' .scheduler.warmup-steps, lr-final, max-steps)",
        "no guidance in the loss: --pipeline.pds-loss-mult 0",
        "a guidance or timestep range under which the prior barely reacts: --pipeline.guidance-scale, "
        "--pipeline.min-step-ratio, --pipeline.max-step-ratio",
    )


@dataclass
class StallDetector:
    """Counts consecutive stage-1 logging intervals in which the scene did not change."""

    intervals: int
    learning_rate_options: str = SceneAdapter.learning_rate_options
    """How this scene kind's edit learning rates are set (its adapter's)."""
    quiet: int = 0
    first_quiet_step: Optional[int] = None
    warned: bool = False

    def record(self, step: int, gradient_norm: float, render_change: Optional[float]) -> Optional[str]:
        """One logging step's readings (render_change None: no earlier probe render); a warning, or None."""
        if gradient_norm == 0:
            reason = "no guidance gradient reached the scene's parameters"
        elif render_change is not None and render_change <= RENDER_TOLERANCE:
            reason = f"the probe view's render changed by at most {render_change:.1e}"
        else:
            self.quiet, self.first_quiet_step, self.warned = 0, None, False
            return None
        self.quiet += 1
        self.first_quiet_step = step if self.first_quiet_step is None else self.first_quiet_step
        if self.quiet < self.intervals or self.warned:
            return None
        self.warned = True
        listed = "; ".join(f"({i}) {cause}" for i, cause in enumerate(causes(self.learning_rate_options), start=1))
        return (
            f"The edit is stalled: from step {self.first_quiet_step} to step {step} ({self.quiet} logging intervals) "
            f"{reason}, so stage 1 is not changing the scene. Likely causes: {listed}."
        )
