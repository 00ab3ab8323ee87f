"""When an edit stage has converged (`--pipeline.stop-when-converged`): stage 1 when the renders of fixed probe
views have stopped changing, stage 2 when every training view has been refined and the training loss has
plateaued. Both criteria are ratios, so they do not depend on the prior's scale or the scene's brightness.

Each detector is checked at the end of every window of iterations, and ends its stage after `patience` calm
windows in a row once `min_iterations` have run. Their state travels in the edit's checkpoints, so that a resumed
run ends its stages where the uninterrupted one would have.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from jaxtyping import Float
from torch import Tensor


class RenderConvergence:
    """Stage 1: a window is calm when the smoothed probe renders moved less than `threshold` times their whole
    change since the first check: mean |s_k - s_(k-1)| < threshold * mean |s_k - s_1|, where
    s_k = smoothing * s_(k-1) + (1 - smoothing) * r_k is an exponential moving average of the renders r_k (s_1 = r_1;
    smoothing 0 compares the renders themselves). Each PDS step draws its own timestep and noise, so the renders
    jitter about the edit; the average keeps that jitter from reading as change (measured in docs/editing.md)."""

    def __init__(self, threshold: float, patience: int, min_iterations: int, smoothing: float = 0.0) -> None:
        self.threshold, self.patience, self.min_iterations = threshold, patience, min_iterations
        self.smoothing = smoothing
        self.first: Optional[Tensor] = None
        self.last: Optional[Tensor] = None
        self.calm = 0
        self.ratio: Optional[float] = None
        """The last check's change ratio (None before the second check)."""

    def record(self, iterations: int, renders: Float[Tensor, "views height width 3"]) -> Optional[str]:
        """The probe renders after `iterations` of the stage; why it has converged, or None."""
        renders = renders.detach().float().cpu()
        if self.first is None or self.last is None:
            self.first = self.last = renders
            return None
        smoothed = self.smoothing * self.last + (1.0 - self.smoothing) * renders
        step_change = float((smoothed - self.last).abs().mean())
        total_change = float((smoothed - self.first).abs().mean())
        self.last = smoothed
        self.ratio = step_change / total_change if total_change > 0 else 0.0
        self.calm = self.calm + 1 if self.ratio < self.threshold else 0
        if self.calm >= self.patience and iterations >= self.min_iterations:
            return (f"converged: the probe views' smoothed renders changed by {self.ratio:.3f} of their change "
                    f"since the stage's first check, below {self.threshold:g}, in {self.calm} windows in a row")
        return None

    def state(self) -> Dict[str, Any]:
        return {"first": self.first, "last": self.last, "calm": self.calm}

    def load(self, state: Dict[str, Any]) -> None:
        self.first, self.last, self.calm = state["first"], state["last"], int(state["calm"])


class LossPlateau:  # the stage-2 detector
    """Stage 2: a window is calm when its mean training loss moved by less than `threshold` of the previous
    window's: |m_k - m_(k-1)| < threshold * m_(k-1)."""

    def __init__(self, threshold: float, patience: int) -> None:
        self.threshold, self.patience = threshold, patience
        self.total: Optional[Tensor] = None
        self.count = 0
        self.previous: Optional[float] = None
        self.calm = 0
        self.ratio: Optional[float] = None
        """The last check's change ratio (None before the second check)."""

    def add(self, loss: Float[Tensor, ""]) -> None:
        """One iteration's loss (kept on its device: no step waits for the GPU)."""
        loss = loss.detach().float()
        self.total = loss if self.total is None else self.total + loss
        self.count += 1

    def record(self, iterations: int, min_iterations: int) -> Optional[str]:
        """At the end of a window, after `iterations` of the stage (it may end after `min_iterations`, once every
        view was refined): why it has converged, or None."""
        if self.total is None or self.count == 0:
            return None
        mean = float(self.total) / self.count
        self.total, self.count = None, 0
        previous, self.previous = self.previous, mean
        if previous is None:
            return None
        change = self.ratio = abs(mean - previous) / previous if previous > 0 else 0.0
        self.calm = self.calm + 1 if change < self.threshold else 0
        if self.calm >= self.patience and iterations >= min_iterations:
            return (f"converged: every training view was refined and the mean loss changed by {change:.3f} of "
                    f"itself, below {self.threshold:g}, in {self.calm} windows in a row")  # fmt: skip
        return None

    def state(self) -> Dict[str, Any]:
        total = None if self.total is None else self.total.cpu()
        return {"total": total, "count": self.count, "previous": self.previous, "calm": self.calm}

    def load(self, state: Dict[str, Any]) -> None:
        self.total, self.count = state["total"], int(state["count"])
        self.previous, self.calm = state["previous"], int(state["calm"])
