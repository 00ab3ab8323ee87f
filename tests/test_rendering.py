"""Deferred back-propagation (fast path) against whole-graph rendering (reference), and resizing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_pds_config

from pds_nerfstudio.guidance.resizing import prior_size, to_prior_input
from pds_nerfstudio.scenes.nerfacto_render import render_view


@pytest.fixture(scope="module")
def scene_model(tiny_scene: Path, tiny_prior_dir: Path):
    pipeline = tiny_pds_config(tiny_scene, tiny_prior_dir).setup(device="cpu", test_mode="val")
    pipeline.train()
    with torch.no_grad():  # a non-trivial scene: perturb the hash grids away from their init
        for parameter in pipeline.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return pipeline.model, pipeline.datamanager.train_dataset.cameras


def _gradients(model, cameras, deferred: bool, weight: torch.Tensor, since_update: int = 0, chunk_size: int = 300):
    model.zero_grad()
    torch.manual_seed(7)  # same jittered samples on both paths
    model.proposal_sampler._steps_since_update = since_update
    render = render_view(model, cameras, view=3, chunk_size=chunk_size, deferred=deferred)
    (render.rgb * weight).sum().backward(retain_graph=True)  # two backward passes, as the pipeline test does
    (render.interlevel_loss + 0.1 * render.distortion_loss).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return render.rgb.detach(), grads


@pytest.mark.parametrize("training_step", [0, 1000])
def test_deferred_backprop_gives_the_whole_graph_gradient(scene_model, training_step: int) -> None:
    # From step 10 on, nerfacto's proposal sampler runs its networks with gradient only every few
    # calls (a counter that the first chunk resets): the recomputation must replay that state.
    model, cameras = scene_model
    model.proposal_sampler.step_cb(training_step)
    since_update = 10_000 if training_step else 0  # the first chunk updates, the others do not
    weight = torch.randn(32, 32, 3, generator=torch.Generator().manual_seed(0))
    rgb_ref, reference = _gradients(model, cameras, deferred=False, weight=weight, since_update=since_update)
    after_reference = model.proposal_sampler._steps_since_update
    rgb_fast, deferred = _gradients(model, cameras, deferred=True, weight=weight, since_update=since_update)
    assert model.proposal_sampler._steps_since_update == after_reference  # left as the plain path leaves it
    assert torch.equal(rgb_ref, rgb_fast)
    assert reference.keys() == deferred.keys()
    assert any(name.startswith("field.") for name in reference) and any(n.startswith("proposal") for n in reference)
    for name, grad in reference.items():
        # float32, same operations in another order of accumulation across chunks
        torch.testing.assert_close(deferred[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_prior_size_and_resize() -> None:
    assert prior_size(512, 512, 512, 8) == (512, 512)
    assert prior_size(540, 960, 512, 8) == (512, 912)
    assert prior_size(32, 32, 64, 8) == (64, 64)
    image = torch.rand(30, 40, 3)
    assert to_prior_input(image, (64, 88)).shape == (1, 3, 64, 88)


def test_a_view_of_one_chunk_is_rendered_once_with_its_graph(scene_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferring a one-chunk view would render it twice for no memory gained: it keeps its graph, same gradient."""
    model, cameras = scene_model
    model.proposal_sampler.step_cb(0)
    weight = torch.randn(32, 32, 3, generator=torch.Generator().manual_seed(1))
    reference = _gradients(model, cameras, deferred=False, weight=weight, chunk_size=32 * 32)
    calls = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, bundle: calls.append(len(bundle)) or forward(self, bundle))
    one_chunk = _gradients(model, cameras, deferred=True, weight=weight, chunk_size=32 * 32)
    assert calls == [32 * 32]  # one forward pass, none replayed in back-propagation
    assert torch.equal(one_chunk[0], reference[0]) and one_chunk[1].keys() == reference[1].keys()
    for name, grad in reference[1].items():  # the same operations; scatter-adds may sum in another order
        torch.testing.assert_close(one_chunk[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)
