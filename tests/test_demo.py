"""`make demo`'s building blocks, fast: the commands it runs parse as nerfstudio's own, `--dry-run`
runs nothing, outputs never overwrite an earlier run, and the summary names every output.

The full demo (about 6.5 minutes on 2 cores) is not run here; `make demo` is its check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import waiting

from pds_nerfstudio import demo

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_train_command_is_one_ns_train_pds_through_all_stages(gpu: bool, tmp_path: Path) -> None:
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    layout = demo.Layout(tmp_path / "out")
    sizes = demo.sizes_for(gpu)
    args = demo.train_command(layout, tmp_path / "prior", sizes)
    assert Path(args[0]).name == "ns-train" and args[1] == "pds"
    config = tyro.cli(AnnotatedBaseConfigUnion, args=args[1:])  # what ns-train parses; fails on unknown options
    pipeline = config.pipeline
    assert config.method_name == "pds"
    assert config.data == layout.scene
    config.pipeline.datamanager.data = config.data  # as ns-train does with its --data alias
    assert config.get_base_dir() == layout.run_dir  # where the summary says the run is
    assert (pipeline.source_prompt, pipeline.target_prompt) == (demo.SOURCE_PROMPT, demo.TARGET_PROMPT)
    assert pipeline.prior.model_id == str(tmp_path / "prior")
    stages = (pipeline.reconstruction_iterations, pipeline.pds_iterations, pipeline.refinement_iterations)
    assert stages == (sizes.reconstruction, sizes.pds, sizes.refinement)
    assert all(n > 0 for n in stages), "the demo runs every stage"
    assert pipeline.refinement_iterations >= 2 * pipeline.sdedit_every, "stage 2 replaces a few images"
    assert config.steps_per_save == sum(stages)  # one checkpoint, at the end
    assert config.vis == "tensorboard"  # no viewer waiting for a browser
    if not gpu:
        assert pipeline.datamanager.train_num_rays_per_batch <= 1024
        assert pipeline.render_scale < 1.0


def test_render_command_is_ns_render_interpolate_of_the_run(tmp_path: Path) -> None:
    import tyro
    from nerfstudio.scripts.render import Commands, RenderInterpolated

    layout = demo.Layout(tmp_path / "out")
    args = demo.render_command(layout, demo.sizes_for(False))
    assert Path(args[0]).name == "ns-render" and args[1] == "interpolate"
    render = tyro.cli(Commands, args=args[1:])
    assert isinstance(render, RenderInterpolated)
    assert render.load_config == layout.config == layout.run_dir / "config.yml"
    assert render.output_path == layout.video
    assert render.pose_source == "train"
    assert render.output_format == "video"


def test_dry_run_prints_the_commands_and_runs_nothing(user_env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "demo_outputs"
    result = waiting.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--dry-run", "--output-root", str(out)],
                         user_env, tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("$ ")]
    assert len(commands) == 3, result.stdout
    assert commands[0].startswith("python -m pds_nerfstudio.synthetic.make_scene ")  # = python scripts/make_scene.py
    assert commands[1].startswith("ns-train pds ") and "--pipeline.prior.model-id" in commands[1]
    assert commands[2].startswith("ns-render interpolate ") and "--pose-source train" in commands[2]
    assert not out.exists(), "a dry run writes no outputs"


def test_scene_command_makes_the_procedural_scene(tmp_path: Path) -> None:
    layout = demo.Layout(tmp_path / "out")
    made = waiting.run(demo.scene_command(layout))
    assert made.returncode == 0, made.stderr[-3000:]
    transforms = json.loads((layout.scene / "transforms.json").read_text())
    assert len(transforms["frames"]) == demo.NUM_VIEWS
    assert (transforms["w"], transforms["h"]) == (demo.SCENE_SIZE, demo.SCENE_SIZE)
    assert len(list((layout.scene / "images").glob("*.png"))) == demo.NUM_VIEWS


def test_output_root_is_new_each_run(tmp_path: Path) -> None:
    first = demo.new_output_root(tmp_path)
    (first / "keep.txt").write_text("earlier run")
    second = demo.new_output_root(tmp_path)  # same second: a suffixed folder, not the same one
    assert first.is_dir() and second.is_dir() and first != second
    assert (first / "keep.txt").read_text() == "earlier run"
    planned = demo.new_output_root(tmp_path / "dry", create=False)
    assert not planned.exists() and not (tmp_path / "dry").exists()


def test_summary_names_every_output_and_the_real_weights_commands(tmp_path: Path) -> None:
    layout = demo.Layout(tmp_path / "out")
    for stage in ("reconstruction", "pds", "refinement"):
        (layout.run_dir / "renders" / stage).mkdir(parents=True)
        (layout.run_dir / "renders" / stage / "frame_00001.png").write_bytes(b"")
    text = demo.summary(layout, tmp_path / "prior", gpu=False, durations={"total": 1.0}, measured="MEASURED LINES")
    paths = (layout.scene, layout.run_dir, layout.config, layout.run_dir / "logs", layout.video, tmp_path / "prior")
    for path in paths:
        assert str(path) in text
    for stage in ("reconstruction", "pds", "refinement"):
        assert f"{layout.run_dir / 'renders' / stage}/  (1 files)" in text
    assert "MEASURED LINES" in text and "scripts/fidelity.py" in text
    assert "ns-train pds --data" in text and "--pipeline.prior.model-id stable-diffusion-v1-5/" in text
    assert "ns-render interpolate" in text


def _renders(folder: Path, scene: Path, colour: str | None, names: list[str]) -> None:
    """Writes renders/<stage>-like PNGs: the scene's own images, or (colour) the same layout in another colour."""
    import shutil

    folder.mkdir(parents=True)
    for name in names:
        shutil.copy((scene.parent / colour if colour else scene) / "images" / name, folder / name)


def test_the_demo_measures_its_result_and_fails_when_the_edit_missed(tmp_path: Path) -> None:
    from pds_nerfstudio.synthetic.procedural_scene import make_scene

    layout = demo.Layout(tmp_path / "out")
    for colour in ("red", "blue"):  # one layout (seed), two colours: the blue one is a perfect edit
        make_scene(tmp_path / "out" / ("scene" if colour == "red" else "blue"), size=48, num_views=5,
                   objects=(f"{colour} sphere",), seed=2)  # fmt: skip
    names = sorted(p.name for p in (layout.scene / "images").glob("*.png"))
    renders = layout.run_dir / "renders"
    _renders(renders / "reconstruction", layout.scene, None, names)
    _renders(renders / "pds", layout.scene, "blue", names)
    _renders(renders / "refinement", layout.scene, "blue", names)
    measures = demo.measure(layout)
    passed, text = demo.verdict(measures)
    assert passed, text
    assert "after stage 2: the sphere reads blue in 5 of 5 training views" in text
    assert measures["refinement"].background_psnr > 30  # only the sphere changed (its antialiased rim aside)

    import shutil

    shutil.rmtree(renders / "refinement")
    _renders(renders / "refinement", layout.scene, None, names)  # stage 2 undid the edit
    passed, text = demo.verdict(demo.measure(layout))
    assert not passed
    assert "reads blue in 0 of 5 training views (others read red)" in text and "FAILED" in text
