"""The torch >= 2.6 and offline fixes of pds_nerfstudio.compat, in-process."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import waiting

from pds_nerfstudio import compat


def test_weights_only_load_accepts_numpy_scalars_of_nerfstudio_schedulers(tmp_path: Path) -> None:
    # nerfstudio 1.1.5's LambdaLR state holds numpy float64 values in `_last_lr`.
    path = tmp_path / "step-000000001.ckpt"
    state = {"step": 1, "schedulers": {"fields": {"_last_lr": [np.float64(0.01)], "x": np.float32(2.0)}}}
    torch.save(state, path)
    compat.allow_nerfstudio_checkpoints()
    loaded = torch.load(path, map_location="cpu")  # weights_only=True is torch's default here
    assert loaded["schedulers"]["fields"]["_last_lr"] == [0.01]


def test_weights_only_still_refuses_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"obj": Path("/etc")}, path)
    compat.allow_nerfstudio_checkpoints()
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, map_location="cpu")


def test_ffmpeg_shim_puts_imageio_ffmpeg_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found = compat.ensure_ffmpeg_on_path()
    assert found == str(tmp_path / "cache" / "pds_nerfstudio" / "bin" / "ffmpeg")
    result = waiting.run([found, "-version"])
    assert result.returncode == 0, result.stderr
    version = result.stdout
    assert version.startswith("ffmpeg version")
    assert compat.ensure_ffmpeg_on_path() == found  # idempotent: now found on PATH


def _warnings_of(action: Callable[[], object]) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.install()
        action()
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def test_nerfstudios_known_deprecation_warnings_are_quiet_and_others_still_show() -> None:
    from nerfstudio.cameras.cameras import Cameras

    cameras = Cameras(camera_to_worlds=torch.eye(4)[None, :3], fx=20.0, fy=20.0, cx=8.0, cy=8.0, width=16, height=16)
    assert not [w for w in _warnings_of(lambda: cameras.generate_rays(camera_indices=0)) if "non-tuple" in w]

    def ours() -> None:  # the same deprecated indexing from code that is not nerfstudio's
        torch.zeros(3, 3)[[slice(None), 0]]

    assert any("non-tuple sequence" in w for w in _warnings_of(ours))

    def grad_scaler_warning(module: str) -> Callable[[], None]:  # as nerfstudio 1.1.5's trainer.py:137 raises it
        message = "`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use `torch.amp.GradScaler('cuda', args...)`"
        return lambda: warnings.warn_explicit(message, FutureWarning, "trainer.py", 137, module=module)

    assert not _warnings_of(grad_scaler_warning("nerfstudio.engine.trainer"))
    assert _warnings_of(grad_scaler_warning("pds_nerfstudio.edit.trainer"))


def test_external_method_stubs_stay_quiet_where_nerfstudio_builds_them_and_offer_the_install_elsewhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from nerfstudio.configs.external_methods import ExternalMethod, ExternalMethodDummyTrainerConfig
    from nerfstudio.configs.method_configs import all_descriptions, all_methods

    compat.install()
    fast = ExternalMethodDummyTrainerConfig.__post_init__
    reference = fast.pds_original  # nerfstudio 1.1.5's own, with inspect.stack()
    method = ExternalMethod("Install me with `pip install some-method`.", configurations=[("some-method", "")])

    def get_external_methods() -> object:  # the name nerfstudio's test looks for, two frames up
        return ExternalMethodDummyTrainerConfig(method_name="some-method", method=method)

    for post_init in (reference, fast):  # both agree: quiet here, the install offer (then exit 0) anywhere else
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ExternalMethodDummyTrainerConfig, "__post_init__", post_init)
            assert get_external_methods().method_name == "some-method"
            assert "Install me" not in capsys.readouterr().out
            with pytest.raises(SystemExit) as exit_:
                ExternalMethodDummyTrainerConfig(method_name="some-method", method=method)
            assert exit_.value.code == 0 and "Install me" in capsys.readouterr().out
    assert ExternalMethodDummyTrainerConfig.__post_init__ is fast
    compat.install()  # idempotent: wrapped once
    assert ExternalMethodDummyTrainerConfig.__post_init__ is fast
    stubs = [name for name, config in all_methods.items() if isinstance(config, ExternalMethodDummyTrainerConfig)]
    assert len(stubs) > 10 and all(all_descriptions[name].startswith("[External") for name in stubs)
