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
