"""Fast multiresolution hash encodings: nerfstudio's own torch encoding under ``torch.compile``, or fused Triton kernels.

Without tiny-cuda-nn, nerfstudio 1.1.5's ``HashEncoding.forward`` runs ``pytorch_fwd``: dozens
of small eager kernels per call, forward and backward. Compiled, the same maths runs as a few
fused kernels; :mod:`pds_nerfstudio.fast.triton_hash_encoding` writes it as one kernel each way.
``pytorch_fwd`` itself is left as it is: the plain reference that tests hold both fast paths
to, and the path taken when a fast one cannot be built.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Literal, Optional, get_args

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.field_components.encodings import HashEncoding

from pds_nerfstudio.fast.triton_hash_encoding import build_kernels, hash_encode

FastEncoding = Literal["off", "compile", "triton"]
MODES = get_args(FastEncoding)

RECOMPILE_LIMIT = 64
"""Graphs dynamo may build for ``pytorch_fwd`` (torch's default is 8, shared by every encoding of the process).

dynamo guards on grad mode, inference mode and autocast, and on the table's shape: nerfacto's field and
proposal table shapes times {training under autocast, its no-grad first pass, rendering without autocast}
make 6 in an `ns-train pds` run on CUDA, and inference mode 2 more; past the limit dynamo runs the plain
encoding without a word.
"""


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
                limit = max(RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)
                with torch._dynamo.config.patch(recompile_limit=limit):
                    return self._compiled(in_tensor)
            # torch 2.14: a compiler failure raises InductorError < BackendCompilerFailed < TorchDynamoException.
            except torch._dynamo.exc.TorchDynamoException as error:
                self.failed = True
                warnings.warn(
                    f"Compiling the hash encoding failed; using nerfstudio's plain encoding "
                    f"(same values, slower); set --pipeline.scene.fast-encoding off to skip the attempt: {error}",
                    stacklevel=2,
                )
        return self.encoding.pytorch_fwd(in_tensor)

    def __getstate__(self) -> Dict[str, Any]:  # compiled code neither pickles nor deep-copies
        return {**self.__dict__, "_compiled": None}


class TritonHashForward:
    """``encoding.pytorch_fwd`` as the fused Triton kernels of :func:`hash_encode`; set as the encoding's ``forward``.

    Where Triton is missing or its first kernel build fails (no CUDA driver it can use), warns once
    and leaves this encoding on the plain path. On CPU tensors the kernels run in Triton's
    interpreter: exact, and slower than the plain path (warned once); meant for tests.
    """

    def __init__(self, encoding: HashEncoding) -> None:
        self.encoding = encoding
        self.failed = False
        self.built = False

    def __call__(self, in_tensor: Float[Tensor, "*bs 3"]) -> Float[Tensor, "*bs output_dim"]:
        if self.failed:
            return self.encoding.pytorch_fwd(in_tensor)
        encoding = self.encoding
        if self.built:
            return hash_encode(in_tensor, encoding.hash_table, encoding.scalings)
        if in_tensor.device.type != "cuda":
            warnings.warn(
                "--pipeline.scene.fast-encoding triton on CPU runs Triton's interpreter (exact, slower than off)", stacklevel=2
            )
        try:  # the first call imports Triton and builds both kernels
            build_kernels(encoding.hash_table, encoding.scalings)
            values = hash_encode(in_tensor, encoding.hash_table, encoding.scalings)
        except Exception as error:  # ImportError, triton.CompilationError, no usable driver: all mean "cannot"
            self.failed = True
            warnings.warn(
                f"The Triton hash encoding is unavailable; using nerfstudio's plain encoding (same values, slower); "
                f"set --pipeline.scene.fast-encoding compile or off to skip the attempt: {type(error).__name__}: {error}",
                stacklevel=2,
            )
            return encoding.pytorch_fwd(in_tensor)
        self.built = True
        return values


def accelerate_hash_encodings(model: torch.nn.Module, mode: FastEncoding) -> int:
    """Makes every torch ``HashEncoding`` of `model` (tiny-cuda-nn ones are left) run fast; returns how many.

    "compile": :class:`CompiledHashForward`; "triton": :class:`TritonHashForward`; "off" changes
    nothing. Parameters, buffers and state_dict keys are untouched.
    """
    if mode not in MODES:
        raise ValueError(f"--pipeline.scene.fast-encoding must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return 0
    kind = CompiledHashForward if mode == "compile" else TritonHashForward
    changed = 0
    for module in model.modules():
        if isinstance(module, HashEncoding) and module.tcnn_encoding is None:
            if not isinstance(module.__dict__.get("forward"), kind):
                module.forward = kind(module)  # an instance attribute: shadows the class's forward
            changed += 1
    return changed


def encoding_in_use(model: torch.nn.Module) -> str:
    """What computes `model`'s hash encodings: "tcnn", "compile", "triton" or "plain" (also where a fast path
    fell back to it: "plain (compile failed)"); several, comma-separated, when they differ."""
    kinds = []
    for module in model.modules():
        if not isinstance(module, HashEncoding):
            continue
        forward = module.__dict__.get("forward")
        if module.tcnn_encoding is not None:
            kind = "tcnn"
        elif isinstance(forward, (CompiledHashForward, TritonHashForward)):
            name = "compile" if isinstance(forward, CompiledHashForward) else "triton"
            kind = f"plain ({name} failed)" if forward.failed else name
        else:
            kind = "plain"
        if kind not in kinds:
            kinds.append(kind)
    return ", ".join(kinds) or "none"
