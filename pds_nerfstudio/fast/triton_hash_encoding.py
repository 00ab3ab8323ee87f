"""nerfstudio's multiresolution hash encoding as two fused Triton kernels, forward and backward.

The maths is exactly ``HashEncoding.pytorch_fwd`` of nerfstudio 1.1.5 (the plain reference the
tests hold this to): at level l the point x is scaled by s_l = floor(min_res * b^l); its 8
neighbouring integer corners (floor or ceil per axis) are hashed as
``(c_x * 1 ^ c_y * 2654435761 ^ c_z * 805459861) mod T + l T`` and their features trilinearly
blended with offset o = s_l x - floor(s_l x) (ceil corners weighted o, floor corners 1 - o).
Only the low log2(T) bits of the hash matter, so it is computed in wrapping 32-bit integers
(2654435761 becomes -1640531535).

One program encodes BLOCK points at every level: the forward reads 3 coordinates and writes
L x F features per point, with no intermediate tensors; the backward recomputes the corners,
scatters the table gradient with atomic adds (as torch's own index backward does on CUDA) and
accumulates the position gradient in registers. On CPU tensors the same kernels run in Triton's
interpreter (exact, slow): that is how the CPU tests check them.

Plain torch: no nerfstudio import.
"""

from __future__ import annotations

import types
from typing import Any, Optional, Tuple

import torch
from jaxtyping import Float
from torch import Tensor
from torch.autograd.function import once_differentiable

GPU_BLOCK = 128
INTERPRETER_BLOCK = 4096  # the interpreter runs each program as numpy: few, wide programs


class DeviceKernel:
    """A ``triton.jit`` kernel for CUDA tensors, and the same body in Triton's interpreter for CPU ones.

    Outside ``TRITON_INTERPRET=1`` the interpreter cannot call ``triton.jit`` helpers, so the
    interpreted body runs with its own globals in which every jit helper is interpreted too.
    """

    def __init__(self, kernel: Any) -> None:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        self.gpu = kernel
        if isinstance(kernel, InterpretedFunction):  # TRITON_INTERPRET=1: triton.jit made it one already
            self.interpreted = kernel
            return
        scope = dict(kernel.fn.__globals__)  # also keeps the interpreter's additions out of the module

        def interpreted(function: Any) -> Any:
            return InterpretedFunction(types.FunctionType(function.__code__, scope, function.__name__))

        scope.update({name: interpreted(v.fn) for name, v in scope.items() if isinstance(v, JITFunction)})
        self.interpreted = interpreted(kernel.fn)

    def launch(self, device: torch.device, num_points: int, *args: Any, **constants: Any) -> None:
        import triton

        if device.type != "cuda":
            self.interpreted[(triton.cdiv(num_points, INTERPRETER_BLOCK),)](*args, BLOCK=INTERPRETER_BLOCK, **constants)
            return
        with torch.cuda.device(device):  # Triton launches on the current device, which may not be the tensors'
            self.gpu[(triton.cdiv(num_points, GPU_BLOCK),)](*args, BLOCK=GPU_BLOCK, **constants)


_KERNELS: Optional[Tuple[DeviceKernel, DeviceKernel]] = None


def kernels() -> Tuple[DeviceKernel, DeviceKernel]:
    """(forward, backward), built once; raises ImportError where Triton is missing."""
    global _KERNELS
    if _KERNELS is None:
        from pds_nerfstudio.fast import triton_kernels

        _KERNELS = DeviceKernel(triton_kernels.hash_encode_forward), DeviceKernel(triton_kernels.hash_encode_backward)
    return _KERNELS


class HashEncodeFunction(torch.autograd.Function):
    """Autograd of :func:`hash_encode`: the table gradient always, the position gradient when asked for."""

    @staticmethod
    def forward(ctx: Any, positions: Tensor, table: Tensor, scalings: Tensor, features: int) -> Tensor:
        num_points, levels = positions.shape[0], scalings.shape[0]
        out = torch.empty(num_points, levels * features, device=positions.device, dtype=table.dtype)
        if num_points:
            kernels()[0].launch(
                positions.device, num_points, positions, table, scalings, out, num_points, table.shape[0] // levels,
                LEVELS=levels, FEATURES=features,
            )  # fmt: skip
        ctx.save_for_backward(positions, table, scalings)
        ctx.features = features
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor], None, None]:
        positions, table, scalings = ctx.saved_tensors
        num_points, levels = positions.shape[0], scalings.shape[0]
        position_grad = ctx.needs_input_grad[0]
        grad_table = torch.zeros_like(table)
        grad_x = torch.empty_like(positions) if position_grad else positions.new_empty(0)
        if num_points:
            kernels()[1].launch(
                positions.device, num_points, positions, table, scalings, grad_out.contiguous().float(), grad_table,
                grad_x, num_points, table.shape[0] // levels, LEVELS=levels, FEATURES=ctx.features,
                POSITION_GRAD=position_grad,
            )  # fmt: skip
        return (grad_x if position_grad else None), grad_table, None, None


def build_kernels(table: Tensor, scalings: Tensor) -> None:
    """Compiles (or, on CPU, prepares) both kernels for this table's shape by running them on one point.

    Outside autograd, so it records nothing in an enclosing checkpoint. Raises what Triton raises
    where it cannot: ImportError, a compilation error, no usable driver.
    """
    levels, features = scalings.shape[0], table.shape[1]
    point = torch.full((1, 3), 0.5, device=table.device)
    scalings = scalings.to(device=table.device, dtype=torch.float32).contiguous()
    table, size = table.detach().contiguous(), table.shape[0] // levels
    values = torch.empty(1, levels * features, device=table.device)
    forward, backward = kernels()
    forward.launch(table.device, 1, point, table, scalings, values, 1, size, LEVELS=levels, FEATURES=features)
    for position_grad in (True, False):
        backward.launch(
            table.device, 1, point, table, scalings, torch.ones_like(values), torch.zeros_like(table),
            torch.empty_like(point), 1, size, LEVELS=levels, FEATURES=features, POSITION_GRAD=position_grad,
        )  # fmt: skip


def hash_encode(
    positions: Float[Tensor, "*bs 3"],
    table: Float[Tensor, "levels_x_table_size features"],
    scalings: Float[Tensor, "levels"],
) -> Float[Tensor, "*bs levels_x_features"]:
    """``HashEncoding.pytorch_fwd`` of a float32 hash table (levels stacked, power-of-two size each), fused.

    Differentiable in `positions` and `table`. Positions are taken in float32, as pytorch_fwd
    does in nerfacto (autocast leaves its products in float32).
    """
    levels, features = scalings.shape[0], table.shape[1]
    table_size = table.shape[0] // levels
    if table.dtype != torch.float32 or table_size * levels != table.shape[0] or table_size & (table_size - 1):
        raise ValueError(f"need a float32 table of levels x 2^k rows, got {tuple(table.shape)} {table.dtype}")
    batch_shape = positions.shape[:-1]
    flat = positions.reshape(-1, 3).float().contiguous()
    scalings = scalings.to(device=positions.device, dtype=torch.float32).contiguous()
    out = HashEncodeFunction.apply(flat, table.contiguous(), scalings, features)
    return out.view(*batch_shape, levels * features)
