"""Non-finite steps never reach the scene, and a run of them stops the edit.

nerfstudio 1.1.5 steps its optimisers through a GradScaler. Under mixed precision the scaler is enabled: it
unscales the gradients, skips the optimiser step when one of them is inf or NaN, and halves its scale (the
trainer then skips the learning-rate schedule's step too). That is exactly what should happen on overflow,
so the gradients reach it untouched. Without mixed precision (CPU, or `--edit-mixed-precision False` with no
scaler) the scaler is disabled and would step on whatever the gradients hold: :class:`GuardedOptimizers`
then skips every optimiser's step when any gradient is not finite, so the scene is unchanged by that step.

:class:`NonFiniteGuard` counts the steps that were skipped or whose loss was not finite, and stops the run
after `max_steps` of them in a row.
"""

from __future__ import annotations

from typing import List

import torch
from torch.cuda.amp.grad_scaler import GradScaler

from nerfstudio.engine.optimizers import Optimizers

from pds_nerfstudio.scenes.base import SceneAdapter


class NonFiniteTrainingError(RuntimeError):
    """Training keeps producing non-finite losses or gradients; continuing would learn nothing."""


def gradients_are_finite(parameters: List[torch.nn.Parameter]) -> bool:
    """Whether every gradient among `parameters` is finite (one host synchronisation)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


class GuardedOptimizers(Optimizers):
    """nerfstudio's Optimizers; with a disabled GradScaler, a step whose gradients are not all finite is skipped
    for every parameter group (`skipped` says so until the next step)."""

    skipped: bool = False

    def optimizer_scaler_step_some(self, grad_scaler: GradScaler, param_groups: List[str]) -> None:
        self.skipped = False
        if not grad_scaler.is_enabled():
            parameters = [p for group in param_groups for p in self.parameters[group]]
            if not gradients_are_finite(parameters):
                self.skipped = True
                self.zero_grad_some(param_groups)
                return
        super().optimizer_scaler_step_some(grad_scaler, param_groups)

    def optimizer_scaler_step_all(self, grad_scaler: GradScaler) -> None:
        self.optimizer_scaler_step_some(grad_scaler, list(self.optimizers))


class NonFiniteGuard:
    """Counts consecutive steps that were skipped for non-finite gradients or had a non-finite loss."""

    def __init__(self, max_steps: int, learning_rate_options: str = SceneAdapter.learning_rate_options) -> None:
        self.max_steps = max_steps
        self.learning_rate_options = learning_rate_options
        self.in_a_row = 0

    def record(self, step: int, loss_finite: bool, step_skipped: bool, stage: str) -> bool:
        """Records one step; returns whether it was non-finite. Raises after `max_steps` such steps in a row."""
        if loss_finite and not step_skipped:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        if self.in_a_row >= self.max_steps:
            what = "losses" if not loss_finite else "gradients"
            raise NonFiniteTrainingError(
                f"{self.in_a_row} iterations in a row up to step {step} ({stage}) gave non-finite {what}, so none "
                "of them changed the scene; the last checkpoint is intact. Lower --pipeline.guidance-scale or the "
                f"learning rates ({self.learning_rate_options}), or use --pipeline.prior.dtype fp32"
            )
        return True
