"""The fast paths against their plain references on a CUDA device, where they are meant to run; skipped without one.

CI has no GPU: these run on a lent one (`scripts/offline_benchmark.sh --checks` runs them before the
benchmark), and here on CPU with PDS_TEST_DEVICE=cpu, which checks the tests themselves (the Triton
kernels then run in Triton's interpreter). On CUDA the compiled kernels may contract a * b + c into
one fused multiply-add, so values are held to float32 rounding rather than bit for bit.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from conftest import tiny_pds_config
from test_triton_hash_encoding import _assert_gradient_close, _values_and_gradients

from nerfstudio.field_components.encodings import HashEncoding
from pds_nerfstudio.fast.fast_encoding import CompiledHashForward, TritonHashForward
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
from pds_nerfstudio.edit.stages import Stage
from pds_nerfstudio.fast.triton_hash_encoding import hash_encode

DEVICE = torch.device(os.environ.get("PDS_TEST_DEVICE", "cuda"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("no CUDA device (PDS_TEST_DEVICE=cpu runs these checks on CPU)", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("offline_hub")
FLOAT32 = dict(rtol=1e-5, atol=1e-6)
# A stage-1 step runs nerfacto's MLPs under autocast (fp16) on CUDA, as nerfstudio's trainer does: a float32
# rounding difference in an encoding can flip an fp16 rounding downstream, so gradients are held to fp16.
STEP_TOLERANCE = 1e-2 if DEVICE.type == "cuda" else 1e-4
NERFACTO_TABLES = [(16, 19, 2048), (5, 17, 128), (5, 17, 256)]  # (levels, log2 size, max res): field, proposals


def _encoding(levels: int, log2_size: int, max_res: int) -> HashEncoding:
    torch.manual_seed(levels + log2_size)
    encoding = HashEncoding(
        num_levels=levels, log2_hashmap_size=log2_size, max_res=max_res, implementation="torch", hash_init_scale=0.5
    )
    return encoding.to(DEVICE)


@pytest.mark.parametrize("levels, log2_size, max_res", NERFACTO_TABLES, ids=["field", "proposal-128", "proposal-256"])
@pytest.mark.parametrize("fast", ["triton", "compile"])
def test_fast_encodings_match_pytorch_fwd(fast: str, levels: int, log2_size: int, max_res: int) -> None:
    encoding = _encoding(levels, log2_size, max_res)
    positions = torch.rand(20_000, 3, generator=torch.Generator().manual_seed(levels)).to(DEVICE) * 1.2 - 0.1
    if fast == "triton":
        fused = _values_and_gradients(lambda x: hash_encode(x, encoding.hash_table, encoding.scalings), encoding, positions)
    else:
        fused = _values_and_gradients(CompiledHashForward(encoding), encoding, positions)
    plain = _values_and_gradients(encoding.pytorch_fwd, encoding, positions)
    torch.testing.assert_close(fused[0], plain[0], **FLOAT32)
    for value, reference in zip(fused[1:], plain[1:]):
        assert float(reference.abs().sum()) > 0
        _assert_gradient_close(value, reference)


def _stage1_gradients(scene: Path, prior_dir: Path, **options: object) -> tuple[object, dict[str, torch.Tensor]]:
    """Gradients of one stage-1 step of the tiny `pds` pipeline on DEVICE, under autocast as nerfstudio's trainer runs it."""
    config = tiny_pds_config(scene, prior_dir, **options)
    config.prior.device = str(DEVICE)
    torch.manual_seed(0)
    pipeline = config.setup(device=str(DEVICE), test_mode="val")
    pipeline.train()
    pipeline.zero_grad()
    with warnings.catch_warnings(), torch.autocast(DEVICE.type, enabled=DEVICE.type == "cuda"):
        warnings.simplefilter("ignore")  # the interpreter warning of triton on CPU
        losses = pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))[1]
    sum(losses.values()).backward()
    return pipeline, {name: p.grad.clone() for name, p in pipeline.model.named_parameters() if p.grad is not None}


def _assert_step_gradients_close(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert sum(float(grad.abs().sum()) > 0 for grad in reference.values()) >= len(reference) // 2
    for name, grad in reference.items():  # relative to the norm: some tables get no gradient in one step
        assert float((grads[name] - grad).norm()) <= STEP_TOLERANCE * float(grad.norm()) + 1e-12, name


@pytest.mark.parametrize("fast", ["triton", "compile"])
def test_stage1_step_with_the_fast_encoding_matches_the_plain_one(tiny_scene: Path, tiny_prior_dir: Path, fast: str) -> None:
    # nerfacto's proposal losses on (off in stage 1 by default, as the authors'): the proposal networks' encodings
    # get gradients as well as the field's
    _, reference = _stage1_gradients(tiny_scene, tiny_prior_dir, fast_encoding="off", pds_proposal_losses=True)
    pipeline, grads = _stage1_gradients(tiny_scene, tiny_prior_dir, fast_encoding=fast, pds_proposal_losses=True)
    kind = TritonHashForward if fast == "triton" else CompiledHashForward
    forwards = [m.__dict__.get("forward") for m in pipeline.model.modules() if isinstance(m, HashEncoding)]
    assert len(forwards) == 3 and all(isinstance(f, kind) and not f.failed for f in forwards)
    assert grads.keys() == reference.keys() and any("proposal_networks" in name for name in reference)
    _assert_step_gradients_close(grads, reference)


def test_deferred_backprop_matches_the_whole_graph(tiny_scene: Path, tiny_prior_dir: Path) -> None:
    """Chunk recomputation replays the CUDA RNG state of its forward (jittered samples), under autocast."""
    _, reference = _stage1_gradients(tiny_scene, tiny_prior_dir, deferred_backprop=False, render_chunk_size=300)
    _, grads = _stage1_gradients(tiny_scene, tiny_prior_dir, deferred_backprop=True, render_chunk_size=300)
    assert grads.keys() == reference.keys()
    _assert_step_gradients_close(grads, reference)


def test_half_precision_prior_agrees_with_fp32(tiny_prior_dir: Path) -> None:
    """Encode with gradient, guidance noise prediction and decode in the prior's half precision (fp16 on CUDA)."""
    half_dtype = "fp16" if DEVICE.type == "cuda" else "bf16"
    priors = {}
    for dtype in (half_dtype, "fp32"):
        priors[dtype] = DiffusionPrior(DiffusionPriorConfig(model_id=str(tiny_prior_dir), dtype=dtype, device=str(DEVICE)))
        priors[dtype].load()
    weights = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    results = {}
    for dtype, prior in priors.items():
        images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(8)).to(DEVICE).requires_grad_()
        latents = prior.encode(images)
        (latents * weights).sum().backward()
        embeddings = prior.text_embeddings(["a red sphere", "a blue sphere"])
        noise = prior.predict_noise(x_t, torch.tensor([100, 600], device=DEVICE), embeddings, 1.0)
        results[dtype] = (latents.detach(), images.grad, noise, prior.decode(latents.detach()))
    assert priors[half_dtype].unet.dtype != torch.float32
    for low, full in zip(results[half_dtype], results["fp32"]):
        assert low.dtype == torch.float32 and float(full.abs().sum()) > 0
        assert float((low - full).norm() / full.norm()) < {"fp16": 0.01, "bf16": 0.05}[half_dtype]  # 11 and 8 mantissa bits



def test_the_reference_rasteriser_matches_gsplats_cuda_kernels() -> None:
    """The splats' CPU path (plain torch) against gsplat's CUDA `rasterization`: values, gradients, and the
    screen-space means' gradient and absolute gradient that splatfacto's densification reads."""
    if DEVICE.type != "cuda":
        pytest.skip("gsplat's rasteriser needs CUDA")
    from gsplat.rendering import rasterization as gsplat_rasterization

    from pds_nerfstudio.scenes.rasterizer import rasterize_reference

    generator = torch.Generator().manual_seed(0)
    count, size = 300, 48
    means = (torch.rand(count, 3, generator=generator) - 0.5) * torch.tensor([1.0, 1.0, 0.5]) + torch.tensor([0, 0, 3.0])
    quats = torch.randn(count, 4, generator=generator)
    scales = torch.rand(count, 3, generator=generator) * 0.08 + 0.01
    opacities = torch.rand(count, generator=generator)
    colours = torch.randn(count, 4, 3, generator=generator) * 0.3  # SH degree 1
    viewmats = torch.eye(4)[None]
    Ks = torch.tensor([[[60.0, 0, size / 2], [0, 60.0, size / 2], [0, 0, 1]]])
    results = []
    for rasterise in (gsplat_rasterization, rasterize_reference):
        inputs = [t.to(DEVICE).clone().requires_grad_(t.dtype.is_floating_point and i in (0, 3, 4))
                  for i, t in enumerate((means, quats, scales, opacities, colours))]  # fmt: skip
        render, alpha, info = rasterise(*inputs, viewmats.to(DEVICE), Ks.to(DEVICE), size, size, sh_degree=1,
                                        packed=False, absgrad=True, render_mode="RGB+ED")  # fmt: skip
        info["means2d"].retain_grad()
        (render[..., :3] * torch.linspace(0, 1, 3, device=DEVICE)).sum().backward()
        results.append((render, alpha, inputs[0].grad, inputs[3].grad, inputs[4].grad, info["means2d"].grad,
                        info["means2d"].absgrad))  # fmt: skip
    for cuda, reference in zip(*results):
        torch.testing.assert_close(reference, cuda, rtol=1e-4, atol=1e-4)
