"""A fast multiresolution hash encoding: nerfstudio's own torch encoding under ``torch.compile``.

Without tiny-cuda-nn, nerfstudio 1.1.5's ``HashEncoding.forward`` runs ``pytorch_fwd``: dozens
of small eager kernels per call, forward and backward. Compiled, the same maths runs as a few
fused kernels. ``pytorch_fwd`` itself is left as it is: the plain reference that tests hold the
compiled path to, and the path taken when compiling fails.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.field_components.encodings import HashEncoding

FastEncoding = Literal["off", "compile"]


class CompiledHashForward:
    """``encoding.pytorch_fwd`` under ``torch.compile``, compiled on first call; set as the encoding's ``forward``.

    A failed compilation (no C++ compiler or Python headers on CPU, no working Triton on CUDA)
    warns once and leaves this encoding on the plain path. Holds no tensors: checkpoints are
    unchanged, and a pickled or deep-copied encoding compiles again on first call.
    """

    def __init__(self, encoding: HashEncoding) -> None:
        self.encoding = encoding
        self.failed = False
        self._compiled: Optional[Callable[[Tensor], Tensor]] = None

    def __call__(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs output_dim"]:
        if not self.failed:
            try:
                if self._compiled is None:
                    # dynamic: the number of points changes with every chunk. No fullgraph: in torch 2.14 it
                    # turns dynamo's fallback to eager past `recompile_limit` graphs (8, shared by every
                    # encoding's `pytorch_fwd`) into FailOnRecompileLimitHit; the test checks no graph breaks.
                    self._compiled = torch.compile(self.encoding.pytorch_fwd, dynamic=True)
                return self._compiled(in_tensor)
            # torch 2.14: a compiler failure raises InductorError < BackendCompilerFailed < TorchDynamoException.
            except torch._dynamo.exc.TorchDynamoException as error:
                self.failed = True
                warnings.warn(
                    f"Compiling the hash encoding failed; using nerfstudio's plain encoding "
                    f"(same values, slower); set --pipeline.fast-encoding off to skip the attempt: {error}",
                    stacklevel=2,
                )
        return self.encoding.pytorch_fwd(in_tensor)

    def __getstate__(self) -> Dict[str, Any]:  # compiled code neither pickles nor deep-copies
        return {**self.__dict__, "_compiled": None}


def accelerate_hash_encodings(model: torch.nn.Module, mode: FastEncoding) -> int:
    """Makes every torch ``HashEncoding`` of `model` (tiny-cuda-nn ones are left) run compiled; returns how many.

    "off" changes nothing. Parameters, buffers and state_dict keys are untouched.
    """
    if mode not in ("off", "compile"):
        raise ValueError(f"--pipeline.fast-encoding must be off or compile, got {mode!r}")
    if mode == "off":
        return 0
    changed = 0
    for module in model.modules():
        if isinstance(module, HashEncoding) and module.tcnn_encoding is None:
            if not isinstance(module.__dict__.get("forward"), CompiledHashForward):
                module.forward = CompiledHashForward(module)  # an instance attribute: shadows the class's forward
            changed += 1
    return changed
