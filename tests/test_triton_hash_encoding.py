"""The fused Triton hash encoding against nerfstudio's plain ``pytorch_fwd``, on CPU (Triton's interpreter).

Values must be identical (the same float32 operations in the same order); gradients agree to
float32 rounding (atomic accumulation and product order differ from torch's autograd).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_pds_config

from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from pds_nerfstudio.fast import triton_hash_encoding
from pds_nerfstudio.fast.fast_encoding import TritonHashForward, accelerate_hash_encodings
from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.fast.triton_hash_encoding import hash_encode

pytest.importorskip("triton")


def _encoding(levels: int, log2_size: int, features: int = 2, seed: int = 0) -> HashEncoding:
    torch.manual_seed(seed)
    # A large init scale, so that values and gradients are far from zero.
    return HashEncoding(
        num_levels=levels, log2_hashmap_size=log2_size, features_per_level=features, implementation="torch",
        hash_init_scale=0.5, max_res=256,
    )  # fmt: skip


def _positions(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    positions = torch.rand(*shape, 3, generator=generator) * 1.2 - 0.1  # some outside [0, 1], as uncontracted points
    flat = positions.view(-1, 3)
    flat[:8] = torch.round(flat[:8] * 16) / 16  # on integer corners of the coarse levels: ceil == floor
    return positions


def _values_and_gradients(encode, encoding: HashEncoding, positions: torch.Tensor):
    x = positions.clone().requires_grad_()
    encoding.hash_table.grad = None
    values = encode(x)
    weights = torch.randn(values.shape, generator=torch.Generator().manual_seed(1)).to(values.device)
    (values * weights).sum().backward()
    return values.detach(), encoding.hash_table.grad.clone(), x.grad.clone()


def _assert_gradient_close(value: torch.Tensor, reference: torch.Tensor) -> None:
    # float32 sums of differently ordered products; relative to the largest entry
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-6 * float(reference.abs().max()))


@pytest.mark.parametrize(
    "levels, log2_size, features, shape",
    [(4, 12, 2, (1000,)), (16, 19, 2, (40, 50)), (3, 4, 4, (300,)), (2, 8, 1, (7, 3, 5))],
    ids=["tiny-pds-field", "nerfacto-default-table", "crowded-table-4-features", "batch-dims-1-feature"],
)
def test_values_match_pytorch_fwd_exactly_and_gradients_closely(levels, log2_size, features, shape) -> None:
    encoding = _encoding(levels, log2_size, features)
    positions = _positions(shape, seed=levels)
    fused = _values_and_gradients(lambda x: hash_encode(x, encoding.hash_table, encoding.scalings), encoding, positions)
    plain = _values_and_gradients(encoding.pytorch_fwd, encoding, positions)
    assert fused[0].shape == (*shape, levels * features) and fused[0].dtype == torch.float32
    torch.testing.assert_close(fused[0], plain[0], rtol=0, atol=0)
    for value, reference in zip(fused[1:], plain[1:]):
        assert float(reference.abs().sum()) > 0
        _assert_gradient_close(value, reference)


def test_table_gradient_alone_and_empty_input() -> None:
    encoding = _encoding(4, 10)
    positions = _positions((200,), seed=3)  # no position gradient asked for: the kernel skips it
    values = hash_encode(positions, encoding.hash_table, encoding.scalings)
    values.square().sum().backward()
    fused = encoding.hash_table.grad.clone()
    encoding.hash_table.grad = None
    encoding.pytorch_fwd(positions).square().sum().backward()
    _assert_gradient_close(fused, encoding.hash_table.grad)
    empty = hash_encode(torch.zeros(0, 3), encoding.hash_table, encoding.scalings)
    assert empty.shape == (0, 8)


def test_a_table_it_cannot_encode_is_refused() -> None:
    encoding = _encoding(2, 4)
    with pytest.raises(ValueError, match="float32 table"):
        hash_encode(torch.rand(4, 3), encoding.hash_table.detach().double(), encoding.scalings)
    with pytest.raises(ValueError, match="2\\^k rows"):
        hash_encode(torch.rand(4, 3), encoding.hash_table.detach()[:-1], encoding.scalings)


def test_option_triton_keeps_a_nerfacto_fields_outputs_and_gradients() -> None:
    from test_fast_encoding import _ray_samples, _tiny_field

    torch.manual_seed(0)
    plain = _tiny_field()
    fast = copy.deepcopy(plain)
    with pytest.warns(UserWarning, match="interpreter"):
        assert accelerate_hash_encodings(fast, "triton") == 1
        results = []
        for field in (plain, fast):
            samples = _ray_samples(num_rays=64, num_samples=8)
            out = field(samples)
            (out[FieldHeadNames.RGB].square().sum() + out[FieldHeadNames.DENSITY].sum()).backward()
            grads = {name: p.grad.clone() for name, p in field.named_parameters() if p.grad is not None}
            results.append((out[FieldHeadNames.RGB].detach(), out[FieldHeadNames.DENSITY].detach(), grads))
    (forward,) = [m.__dict__["forward"] for m in fast.modules() if isinstance(m, HashEncoding)]
    assert isinstance(forward, TritonHashForward) and forward.built and not forward.failed
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=0)
    assert results[1][2].keys() == results[0][2].keys() and "mlp_base.model.0.hash_table" in results[0][2]
    for name, reference in results[0][2].items():
        _assert_gradient_close(results[1][2][name], reference)
    assert list(fast.state_dict()) == list(plain.state_dict())


def test_without_triton_it_warns_once_and_runs_the_plain_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_triton():
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(triton_hash_encoding, "kernels", no_triton)
    encoding = _encoding(2, 4)
    assert accelerate_hash_encodings(encoding, "triton") == 1
    positions = torch.rand(50, 3)
    with pytest.warns(UserWarning) as warned:
        values = encoding(positions)
    assert any("plain encoding" in str(w.message) and "ImportError" in str(w.message) for w in warned)
    torch.testing.assert_close(values, encoding.pytorch_fwd(positions), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second attempt, no second warning
        torch.testing.assert_close(encoding(positions), values, rtol=0, atol=0)


def test_stage1_step_with_triton_matches_the_plain_encoding(tiny_scene: Path, tiny_prior_dir: Path) -> None:
    grads = {}
    for mode in ("off", "triton"):
        # proposal losses on: the proposal networks' encodings get gradients as well as the field's
        config = tiny_pds_config(tiny_scene, tiny_prior_dir, fast_encoding=mode, pds_proposal_losses=True)
        torch.manual_seed(0)
        pipeline = config.setup(device="cpu", test_mode="val")
        pipeline.train()
        pipeline.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the interpreter warning
            losses = pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))[1]
        sum(losses.values()).backward()
        grads[mode] = {name: p.grad.clone() for name, p in pipeline.model.named_parameters() if p.grad is not None}
    forwards = [m.__dict__.get("forward") for m in pipeline.model.modules() if isinstance(m, HashEncoding)]
    assert len(forwards) == 3 and all(isinstance(f, TritonHashForward) and f.built for f in forwards)
    assert grads["triton"].keys() == grads["off"].keys()
    assert any("proposal_networks" in name for name in grads["off"])
    for name, reference in grads["off"].items():
        torch.testing.assert_close(grads["triton"][name], reference, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("position_grad", [True, False])
def test_kernels_compile_for_an_h100_ahead_of_time(position_grad: bool) -> None:
    """The interpreter checks the maths; this checks that Triton's real compiler accepts the kernels
    (down to a cubin for sm_90 with Triton's own ptxas), which needs no GPU."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pds_nerfstudio.fast import triton_kernels

    pointers = ("x_ptr", "table_ptr", "scale_ptr")
    constants = {"LEVELS": 16, "FEATURES": 2, "BLOCK": 128}
    kernels = {
        triton_kernels.hash_encode_forward: ((*pointers, "out_ptr"), constants),
        triton_kernels.hash_encode_backward: (
            (*pointers, "grad_out_ptr", "grad_table_ptr", "grad_x_ptr"), {**constants, "POSITION_GRAD": position_grad}
        ),
    }
    for kernel, (pointer_names, constexprs) in kernels.items():
        signature = {name: "*fp32" for name in pointer_names} | {"num_points": "i32", "table_size": "i32"}
        signature |= {name: "constexpr" for name in constexprs}
        try:
            compiled = triton_compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32)
            )
        except FileNotFoundError as error:  # a Triton without its bundled CUDA tools
            pytest.skip(f"Triton cannot compile for CUDA here: {error}")
        assert compiled.asm["cubin"]
        if kernel is triton_kernels.hash_encode_backward:
            assert "atom.global.gpu.relaxed.add.f32" in compiled.asm["ptx"]
