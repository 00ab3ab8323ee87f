"""Scene kinds as nested configs (`--pipeline.scene.*`, `_target` = the adapter), composed in method_configs; moved
flags refused with the new name; runs saved in the old layout still load."""

from __future__ import annotations

import copy
import dataclasses
import io
from pathlib import Path

import pytest
import yaml

import waiting
from conftest import console_script


def test_each_method_composes_its_scene_kind_with_the_one_edit_pipeline() -> None:
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    from pds_nerfstudio.edit.pipeline import EditPipelineConfig
    from pds_nerfstudio.scenes.nerfacto import NerfactoScene, NerfactoSceneConfig
    from pds_nerfstudio.scenes.splatfacto import SplatfactoScene, SplatfactoSceneConfig

    nerf_held = not NerfactoSceneConfig.hold_outside_region
    nerfacto = tyro.cli(AnnotatedBaseConfigUnion, args=["pds", "--pipeline.scene.render-chunk-size", "4096",
                                                        "--pipeline.scene.pds-proposal-losses", "True",
                                                        "--pipeline.scene.hold-outside-region", str(nerf_held)])  # fmt: skip
    assert type(nerfacto.pipeline) is EditPipelineConfig and type(nerfacto.pipeline.scene) is NerfactoSceneConfig
    assert nerfacto.pipeline.scene.render_chunk_size == 4096 and nerfacto.pipeline.scene.pds_proposal_losses
    assert nerfacto.pipeline.scene.hold_outside_region is nerf_held
    assert nerfacto.pipeline.scene_kind is NerfactoScene
    held = not SplatfactoSceneConfig.hold_outside_region  # the default's opposite
    splat = tyro.cli(AnnotatedBaseConfigUnion, args=["pds-splat", "--pipeline.scene.edit-densify", "True",
                                                     "--pipeline.scene.hold-outside-region", str(held)])  # fmt: skip
    assert type(splat.pipeline) is EditPipelineConfig and type(splat.pipeline.scene) is SplatfactoSceneConfig
    assert splat.pipeline.scene.edit_densify and splat.pipeline.scene_kind is SplatfactoScene
    assert splat.pipeline.scene.hold_outside_region is held


def test_a_bad_scene_option_is_refused_as_the_command_line_spells_it(tiny_scene: Path, tiny_prior_dir: Path) -> None:
    from conftest import tiny_pds_config

    with pytest.raises(ValueError, match=r"--pipeline\.scene\.render-chunk-size must be >= 1, got 0"):
        tiny_pds_config(tiny_scene, tiny_prior_dir, render_chunk_size=0).validate()


@pytest.mark.parametrize(("method", "argument"), [("pds", "--pipeline.render-chunk-size"),
                                                  ("pds-splat", "--pipeline.edit_densify=True")])
def test_a_moved_flag_gets_one_error_line_naming_the_new_one(method: str, argument: str) -> None:
    from pds_nerfstudio.moved_flags import moved_flag_error

    error = moved_flag_error(method, ["--data", "scene", argument, "4096"])
    new = "--pipeline.scene." + argument.split("=")[0].removeprefix("--pipeline.").replace("_", "-")
    assert error is not None and error.startswith(f"error: {argument.split('=')[0]} is now {new} ")
    assert moved_flag_error(method, ["--pipeline.scene.render-chunk-size", "4096", "--pipeline.render-scale", "0.5"]) is None
    other = "pds-splat" if method == "pds" else "pds"
    assert moved_flag_error(other, [argument]) is None  # no such option there: nothing to point to


def test_ns_train_stops_at_a_moved_flag_before_anything_loads(tmp_path: Path, user_env: dict[str, str]) -> None:
    args = [console_script("ns-train"), "pds", "--data", str(tmp_path / "absent"), "--pipeline.fast-encoding", "off"]
    result = waiting.run(args, user_env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --pipeline.fast-encoding is now --pipeline.scene.fast-encoding "
        "(a scene kind's own options are under --pipeline.scene.)"
    )
    assert not list(tmp_path.iterdir())  # nothing written


def _in_the_old_layout(text: str, old_class: str) -> str:
    """A config.yml as runs saved it before the moves: the pipeline tagged with its scene kind's own class, the
    scene's options among the pipeline's, the prior's config in `guidance/`."""
    document = yaml.compose(text, Loader=yaml.Loader)
    pipeline = next(value for key, value in document.value if key.value == "pipeline")
    pipeline.tag = f"tag:yaml.org,2002:python/object:{old_class}"
    prior = next(value for key, value in pipeline.value if key.value == "prior")
    prior.tag = "tag:yaml.org,2002:python/object:pds_nerfstudio.guidance.prior.DiffusionPriorConfig"
    scene = next(value for key, value in pipeline.value if key.value == "scene")
    pipeline.value = [(key, value) for key, value in pipeline.value if key.value != "scene"]
    pipeline.value += [(key, value) for key, value in scene.value if key.value != "_target"]
    out = io.StringIO()
    yaml.serialize(document, out)
    return out.getvalue()


@pytest.mark.parametrize(
    ("method", "old_class"),
    [("pds_method", "pds_nerfstudio.scenes.nerfacto.NerfactoEditPipelineConfig"),
     ("pds_splat_method", "pds_nerfstudio.scenes.splatfacto.SplatfactoEditPipelineConfig")],
)  # fmt: skip
def test_a_config_saved_in_the_old_layout_loads_as_todays(method: str, old_class: str) -> None:
    from pds_nerfstudio import method_configs  # registers the old layout's reader

    config = copy.deepcopy(getattr(method_configs, method).config)
    for option in dataclasses.fields(config.pipeline.scene):  # every scene option away from its default
        value = getattr(config.pipeline.scene, option.name)
        if isinstance(value, bool):
            setattr(config.pipeline.scene, option.name, not value)
        elif isinstance(value, int):
            setattr(config.pipeline.scene, option.name, value + 1)
    old = _in_the_old_layout(yaml.dump(config), old_class)
    assert old_class in old and "scene:" not in old and "guidance.prior.DiffusionPriorConfig" in old
    loaded = yaml.load(old, Loader=yaml.Loader)  # as nerfstudio reads config.yml
    assert loaded.pipeline == config.pipeline and type(loaded.pipeline.scene) is type(config.pipeline.scene)
