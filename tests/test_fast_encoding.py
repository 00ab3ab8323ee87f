"""--pipeline.scene.fast-encoding compile against nerfstudio's plain hash encoding, on CPU: values, gradients, checkpoints.

Every hash encoding here has the tiny `pds` field's shape (4 levels of 2^12 entries), so one
compiled graph, built once per process, serves the encoding, the field and the pipelines.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_pds_config

from nerfstudio.cameras.rays import Frustums, RaySamples
from nerfstudio.field_components.encodings import HashEncoding
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.fields.nerfacto_field import NerfactoField
from pds_nerfstudio.fast.fast_encoding import CompiledHashForward, accelerate_hash_encodings, encoding_in_use
from pds_nerfstudio.edit.pipeline import EditPipeline
from pds_nerfstudio.edit.stages import Stage

LEVELS, LOG2_TABLE = 4, 12  # the tiny pds config's field encoding
EXACT = dict(rtol=1e-5, atol=1e-6)  # float32; the compiled kernels do the same operations


def _encodings(module: torch.nn.Module) -> list[HashEncoding]:
    return [m for m in module.modules() if isinstance(m, HashEncoding)]


def _tiny_field() -> NerfactoField:
    return NerfactoField(
        torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]), num_images=3, num_levels=LEVELS,
        log2_hashmap_size=LOG2_TABLE, hidden_dim=16, hidden_dim_color=16, implementation="torch",
    )  # fmt: skip


@pytest.fixture(scope="module")
def fields() -> tuple[NerfactoField, NerfactoField]:
    """A tiny nerfacto field, plain, and an identical copy whose encoding runs compiled."""
    torch.manual_seed(0)
    plain = _tiny_field()
    fast = copy.deepcopy(plain)
    assert accelerate_hash_encodings(fast, "compile") == 1
    return plain, fast


def _ray_samples(num_rays: int, num_samples: int) -> RaySamples:
    generator = torch.Generator().manual_seed(num_rays)
    origins = torch.rand(num_rays, 1, 3, generator=generator) - 0.5
    directions = torch.nn.functional.normalize(torch.randn(num_rays, 1, 3, generator=generator), dim=-1)
    starts = torch.linspace(0.0, 0.4, num_samples + 1)
    frustums = Frustums(
        origins=origins.expand(-1, num_samples, -1), directions=directions.expand(-1, num_samples, -1),
        starts=starts[:-1, None].expand(num_rays, -1, 1), ends=starts[1:, None].expand(num_rays, -1, 1),
        pixel_area=torch.full((num_rays, num_samples, 1), 1e-4),
    )  # fmt: skip
    cameras = torch.randint(0, 3, (num_rays, 1, 1), generator=generator).expand(-1, num_samples, -1)
    return RaySamples(frustums=frustums, camera_indices=cameras)


@pytest.mark.parametrize("num_points", [1000, 777])  # dynamic shapes: one graph for both counts
def test_compiled_encoding_matches_plain_values_and_gradients(fields, num_points: int) -> None:
    encoding = _encodings(fields[1])[0]
    forward = encoding.__dict__["forward"]
    positions = torch.rand(num_points, 3, generator=torch.Generator().manual_seed(num_points))
    results = []
    for run in (encoding, encoding.pytorch_fwd):  # compiled forward, then the plain reference
        x = positions.clone().requires_grad_()
        encoding.hash_table.grad = None
        values = run(x)
        (values * torch.linspace(-1, 1, values.shape[-1])).square().sum().backward()
        results.append((values.detach(), encoding.hash_table.grad.clone(), x.grad.clone()))
    assert isinstance(forward, CompiledHashForward) and forward._compiled is not None and not forward.failed
    (values, table_grad, x_grad), (ref_values, ref_table_grad, ref_x_grad) = results
    assert values.shape == (num_points, 2 * LEVELS)
    torch.testing.assert_close(values, ref_values, **EXACT)
    torch.testing.assert_close(table_grad, ref_table_grad, **EXACT)
    torch.testing.assert_close(x_grad, ref_x_grad, **EXACT)
    assert float(table_grad.abs().sum()) > 0 and float(x_grad.abs().sum()) > 0


def test_the_encoding_compiles_as_one_graph(fields) -> None:
    explanation = torch._dynamo.explain(_encodings(fields[1])[0].pytorch_fwd)(torch.rand(10, 3))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def test_graphs_past_dynamos_recompile_limit_stay_compiled(fields) -> None:
    """Each of grad mode, inference mode and autocast needs a graph of its own: an `ns-train pds` run on CUDA
    uses 6 of torch's default limit of 8, past which dynamo silently runs the plain encoding. Here the
    limit is lowered to 1, so this mode's graph is past it."""
    encoding = _encodings(fields[1])[0]
    counters = torch._dynamo.utils.counters
    with torch._dynamo.config.patch(recompile_limit=1):  # (pytest's monkeypatch would delete the option on undo)
        fields[1](_ray_samples(num_rays=8, num_samples=4))  # the training graph exists: the limit is reached
        compiled_before = counters["frames"]["ok"]
        positions = torch.rand(300, 3)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            values = encoding(positions)
    assert counters["frames"]["ok"] == compiled_before + 1  # compiled, not run as it is
    assert not [reason for reason in counters["unimplemented"] if "recompile limit" in reason.lower()]
    torch.testing.assert_close(values, encoding.pytorch_fwd(positions), rtol=0, atol=0)


def test_compiled_field_matches_plain_outputs_and_parameter_gradients(fields) -> None:
    outputs, grads = [], []
    for field in fields:
        field.zero_grad()
        samples = _ray_samples(num_rays=64, num_samples=8)
        out = field(samples)
        rgb, density = out[FieldHeadNames.RGB], out[FieldHeadNames.DENSITY]
        (rgb.square().sum() + density.sum()).backward()
        outputs.append((rgb.detach(), density.detach()))
        grads.append({name: p.grad.clone() for name, p in field.named_parameters() if p.grad is not None})
    for value, reference in zip(*outputs):
        torch.testing.assert_close(value, reference, **EXACT)
    assert grads[0].keys() == grads[1].keys() and "mlp_base.model.0.hash_table" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], **EXACT, msg=name)


def test_checkpoints_are_unchanged_and_the_encoding_pickles(fields) -> None:
    plain, fast = fields
    fast(_ray_samples(num_rays=8, num_samples=4))  # compiled state exists before saving
    state, reference = fast.state_dict(), plain.state_dict()
    assert list(state) == list(reference)
    assert all(torch.equal(state[key], reference[key]) for key in reference)
    _tiny_field().load_state_dict(state, strict=True)
    encoding = _encodings(fast)[0]
    copied = pickle.loads(pickle.dumps(encoding))  # compiles again (a cached graph) on first use
    assert copied.__dict__["forward"].encoding is copied and copied.__dict__["forward"]._compiled is None
    positions = torch.rand(100, 3, requires_grad=True)  # as nerfacto's field passes them: no new graph
    torch.testing.assert_close(copied(positions), encoding.pytorch_fwd(positions), **EXACT)


def test_off_changes_nothing() -> None:
    encoding = HashEncoding(num_levels=2, log2_hashmap_size=4, implementation="torch")
    assert accelerate_hash_encodings(encoding, "off") == 0
    assert "forward" not in encoding.__dict__
    with pytest.raises(ValueError, match="fast-encoding"):
        accelerate_hash_encodings(encoding, "fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["compile", "triton"])
def test_tiny_cuda_nn_encodings_are_left_as_they_are(mode: str) -> None:
    """Where tiny-cuda-nn is installed nerfacto uses it (its default implementation); nothing replaces it."""
    encoding = HashEncoding(num_levels=2, log2_hashmap_size=4, implementation="torch")
    encoding.tcnn_encoding = torch.nn.Identity()  # what nerfstudio holds when tcnn is importable
    assert accelerate_hash_encodings(encoding, mode) == 0 and "forward" not in encoding.__dict__


def test_encoding_in_use_names_what_computes_the_encodings() -> None:
    def encoding() -> HashEncoding:
        return HashEncoding(num_levels=2, log2_hashmap_size=4, implementation="torch")

    model = torch.nn.ModuleList([encoding(), encoding()])
    assert encoding_in_use(model) == "plain" and encoding_in_use(torch.nn.Linear(1, 1)) == "none"
    accelerate_hash_encodings(model[0], "triton")
    assert encoding_in_use(model) == "triton, plain"
    model[0].__dict__["forward"].failed = True
    accelerate_hash_encodings(model[1], "compile")
    assert encoding_in_use(model) == "plain (triton failed), compile"


def test_a_failed_compilation_warns_once_and_runs_the_plain_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def compile_without_a_compiler(function, **options):
        def compiled(*args):
            calls.append(options)
            # What inductor raises where no C++ compiler works (torch 2.14: InductorError is a subclass).
            raise torch._dynamo.exc.BackendCompilerFailed(compiled, RuntimeError("No working C++ compiler"), None)

        return compiled

    monkeypatch.setattr(torch, "compile", compile_without_a_compiler)
    encoding = HashEncoding(num_levels=2, log2_hashmap_size=4, implementation="torch")
    assert accelerate_hash_encodings(encoding, "compile") == 1
    positions = torch.rand(50, 3)
    with pytest.warns(UserWarning, match="plain encoding") as warned:
        values = encoding(positions)
    assert len(warned) == 1 and calls == [dict(dynamic=True)]
    torch.testing.assert_close(values, encoding.pytorch_fwd(positions), rtol=0, atol=0)
    torch.testing.assert_close(encoding(positions), values, rtol=0, atol=0)  # no second attempt
    assert len(calls) == 1


# ------------------------------------------------------------------ pipeline


def _stage1_gradients(scene: Path, prior_dir: Path, fast_encoding: str) -> tuple[EditPipeline, dict[str, torch.Tensor]]:
    # With nerfacto's proposal losses in stage 1 the proposal networks' (compiled) encodings get gradients too.
    config = tiny_pds_config(scene, prior_dir, fast_encoding=fast_encoding, pds_proposal_losses=True)
    for args in config.model.proposal_net_args_list:  # the field's encoding shape: no second graph to compile
        args.update(num_levels=LEVELS, log2_hashmap_size=LOG2_TABLE)
    torch.manual_seed(0)
    pipeline = config.setup(device="cpu", test_mode="val")
    pipeline.train()
    pipeline.zero_grad()
    losses = pipeline.get_train_loss_dict(pipeline.schedule.start(Stage.PDS))[1]
    sum(losses.values()).backward()
    return pipeline, {name: p.grad.clone() for name, p in pipeline.model.named_parameters() if p.grad is not None}


def test_pipeline_option_keeps_stage1_gradients_and_checkpoints(
    tiny_scene: Path, tiny_prior_dir: Path, tmp_path: Path
) -> None:
    plain, reference = _stage1_gradients(tiny_scene, tiny_prior_dir, "off")
    fast, grads = _stage1_gradients(tiny_scene, tiny_prior_dir, "compile")
    assert not any("forward" in e.__dict__ for e in _encodings(plain.model))
    assert len(_encodings(fast.model)) == 3  # the field's and both proposal networks'
    forwards = [e.__dict__.get("forward") for e in _encodings(fast.model)]
    assert all(isinstance(f, CompiledHashForward) and f._compiled is not None and not f.failed for f in forwards)
    assert grads.keys() == reference.keys()
    assert any(name.startswith("field.") for name in grads) and any("proposal_networks" in n for n in grads)
    for name in reference:
        torch.testing.assert_close(grads[name], reference[name], rtol=1e-4, atol=1e-6, msg=name)
    assert list(fast.state_dict()) == list(plain.state_dict())
    for saved, loading in ((fast, plain), (plain, fast)):  # as ns-render loads a checkpoint (strictly)
        torch.save({"pipeline": saved.state_dict()}, tmp_path / "step.ckpt")
        loading.load_pipeline(torch.load(tmp_path / "step.ckpt")["pipeline"], step=5)
