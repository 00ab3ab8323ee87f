"""Nerfacto for our methods starts offline: LPIPS is deferred and never downloads at start-up."""

from __future__ import annotations

import pytest
import torch
import torchmetrics.image.lpip as lpip_module

from nerfstudio.data.scene_box import SceneBox
from pds_nerfstudio.scenes.nerfacto_offline import DeferredLPIPS, OfflineNerfactoModel, OfflineNerfactoModelConfig


def _no_download(*args: object, **kwargs: object) -> None:
    raise RuntimeError("network access attempted")


def test_model_builds_without_network_and_checkpoints_hold_no_lpips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    original = lpip_module.LearnedPerceptualImagePatchSimilarity
    model = OfflineNerfactoModelConfig().setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])), num_train_data=4, metadata={}
    )
    assert isinstance(model, OfflineNerfactoModel)
    assert isinstance(model.lpips, DeferredLPIPS)
    assert lpip_module.LearnedPerceptualImagePatchSimilarity is original  # patch scoped to populate_modules
    assert not [key for key in model.state_dict() if "lpips" in key]


def test_deferred_lpips_is_nan_with_one_warning_when_weights_are_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr("torchvision.models._api.WeightsEnum.get_state_dict", _no_download)
    lpips = DeferredLPIPS(normalize=True)
    images = torch.rand(1, 3, 16, 16)
    with pytest.warns(UserWarning, match="LPIPS is reported as NaN"):
        assert torch.isnan(lpips(images, images))
    assert torch.isnan(lpips(images, images))  # no second attempt, no second warning


def test_the_stretch_depths_are_nerfstudios_median_at_other_weights() -> None:
    from nerfstudio.cameras.rays import Frustums, RaySamples
    from nerfstudio.model_components.renderers import DepthRenderer

    from pds_nerfstudio.scenes.nerfacto_offline import depth_at_weight

    generator = torch.Generator().manual_seed(0)
    starts = torch.sort(torch.rand(50, 32, 1, generator=generator) * 4, dim=1).values
    samples = RaySamples(Frustums(origins=torch.zeros(50, 32, 3), directions=torch.ones(50, 32, 3),
                                  starts=starts, ends=starts + 0.01, pixel_area=torch.ones(50, 32, 1)))  # fmt: skip
    weights = torch.rand(50, 32, 1, generator=generator) / 16  # about 1 in all along a ray
    weights[25:] /= 4  # rays that never reach 0.8: their last sample
    torch.testing.assert_close(depth_at_weight(weights, samples, 0.5), DepthRenderer("median")(weights, samples))
    near, far = depth_at_weight(weights, samples, 0.2), depth_at_weight(weights, samples, 0.8)
    last = (starts[:, -1] + starts[:, -1] + 0.01) / 2
    assert (near <= far).all() and (far[:25] < last[:25]).sum() > 20
    torch.testing.assert_close(far[25:], last[25:])


def test_a_still_render_says_which_stretch_of_each_ray_it_comes_from() -> None:
    from nerfstudio.cameras.rays import RayBundle

    from pds_nerfstudio.scenes.nerfacto_offline import DEPTH_FAR, DEPTH_NEAR

    torch.manual_seed(0)
    model = OfflineNerfactoModelConfig().setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])), num_train_data=4, metadata={}
    )
    directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    bundle = RayBundle(origins=-2 * directions, directions=directions, pixel_area=torch.ones(64, 1),
                       camera_indices=torch.zeros(64, 1, dtype=torch.long))  # fmt: skip
    model.eval()
    with torch.no_grad():
        outputs = model(bundle)
    assert (outputs[DEPTH_NEAR] <= outputs["depth"]).all() and (outputs["depth"] <= outputs[DEPTH_FAR]).all()
    assert model.field.rendered is None  # recorded for that render only
    model.train()
    assert DEPTH_NEAR not in model(bundle)  # training renders are nerfacto's own
