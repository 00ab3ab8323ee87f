"""`make demo`: a text-driven edit of a procedural scene with `ns-train pds`, end to end.

Steps, each the command a user would type (printed before it runs):

1. `python -m pds_nerfstudio.synthetic.make_scene` (= `python scripts/make_scene.py`): a procedural scene (a red sphere, 24 views of 64x64).
2. `ns-train pds`: one run through all stages on that scene, "a red sphere" -> "a blue sphere":
   stage 0 reconstructs it with nerfacto, stage 1 edits it with PDS, stage 2 refines it with SDEdit.
   The prior is the toy Stable Diffusion embedded in the package (pds_nerfstudio/assets/toy_prior,
   trained here on procedural renders of 12 colours x 3 shapes by scripts/train_toy_prior.py), so the
   sphere really turns blue.
3. `ns-render interpolate --pose-source train`: a video of the edited scene.

Small sizes on CPU (about 6 minutes on 2 cores, one torch thread per command); larger ones when
torch sees a GPU. Outputs go under demo_outputs/<timestamp>/, a new folder each run. `--dry-run`
prints the commands without running them. At the end the demo measures its result (how many views
read as the target colour after each stage, and the background against the reconstruction) and
exits non-zero when the edit did not reach its target.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from pds_nerfstudio.commands import BIN, REPO, command_env, run_command, shown
from pds_nerfstudio.measure.fidelity_measures import StageRenderMeasures
from pds_nerfstudio.synthetic.small_nerfacto import CPU_NERFACTO_OPTIONS, NO_EVALUATION_OPTIONS, edit_schedule_options

OBJECTS = ("red sphere",)
SCENE_SIZE = 64
NUM_VIEWS = 24
SOURCE_PROMPT = "a red sphere"
TARGET_PROMPT = "a blue sphere"
TARGET_COLOUR = "blue"
SUCCESS = 0.9
"""The edit succeeded when the object reads as the target colour in at least this fraction of the views."""
RUN_TIMESTAMP = "edit"  # the run folder's last part: <output-root>/runs/scene/pds/edit


@dataclass(frozen=True)
class Sizes:
    """Iterations per stage and the nerfstudio options that make `ns-train pds` fit the demo's budget."""

    reconstruction: int
    pds: int
    refinement: int
    interpolation_steps: int
    options: tuple[str, ...]


# fmt: off
CPU_SIZES = Sizes(
    reconstruction=600, pds=100, refinement=220, interpolation_steps=2,
    options=(
        *CPU_NERFACTO_OPTIONS,
        "--pipeline.render-scale", "0.5",        # stage 1 renders 32x32 (resized to 64x64 for the prior): 4x fewer rays
    ),
)
GPU_SIZES = Sizes(reconstruction=3000, pds=300, refinement=600, interpolation_steps=8, options=())
COMMON_OPTIONS = (
    "--pipeline.prior.dtype", "fp32",          # the toy prior is cheap in fp32 (fp16 is for real weights on a GPU)
    "--pipeline.guidance-scale", "7.5",        # the toy prior needs less guidance than SD's 100: its 2D edits of
                                               # the scene's renders are clean at 7.5, oversaturated at 30, broken
                                               # at 100 (scripts/fidelity.py uses 7.5 for every method too)
    "--pipeline.sdedit-guidance-scale", "7.5",
    "--pipeline.sdedit-every", "10",           # 220 refinement steps on CPU: each of the 22 training views once
    "--pipeline.change-view-every", "5",       # few stage-1 steps: visit many views
    "--pipeline.log-every", "5",               # stage-1 logging images: source | render | gradient magnitude
    *NO_EVALUATION_OPTIONS,
    "--vis", "tensorboard",                    # no viewer: the demo runs unattended
)
# fmt: on


@dataclass(frozen=True)
class Layout:
    """Where a demo run puts everything, under one output root."""

    root: Path

    @property
    def scene(self) -> Path:
        return self.root / "scene"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def run_dir(self) -> Path:
        """The nerfstudio run: <output-dir>/<experiment = scene folder name>/<method>/<timestamp>."""
        return self.runs / self.scene.name / "pds" / RUN_TIMESTAMP

    @property
    def config(self) -> Path:
        return self.run_dir / "config.yml"

    @property
    def video(self) -> Path:
        return self.root / "edit.mp4"


def sizes_for(gpu: bool) -> Sizes:
    return GPU_SIZES if gpu else CPU_SIZES


def scene_command(layout: Layout) -> list[str]:
    return [sys.executable, "-m", "pds_nerfstudio.synthetic.make_scene", str(layout.scene),
            "--size", str(SCENE_SIZE), "--num-views", str(NUM_VIEWS), "--objects", *OBJECTS]  # fmt: skip


def train_command(layout: Layout, prior_dir: Path, sizes: Sizes) -> list[str]:
    total = sizes.reconstruction + sizes.pds + sizes.refinement
    return [
        str(BIN / "ns-train"), "pds", "--data", str(layout.scene),
        "--output-dir", str(layout.runs), "--timestamp", RUN_TIMESTAMP,
        "--pipeline.source-prompt", SOURCE_PROMPT, "--pipeline.target-prompt", TARGET_PROMPT,
        "--pipeline.prior.model-id", str(prior_dir),
        "--pipeline.reconstruction-iterations", str(sizes.reconstruction),
        "--pipeline.pds-iterations", str(sizes.pds),
        "--pipeline.refinement-iterations", str(sizes.refinement),
        "--steps-per-save", str(total),
        *edit_schedule_options(sizes.pds),  # the authors' learning-rate curve, over this short stage 1
        *COMMON_OPTIONS, *sizes.options,
    ]  # fmt: skip


def render_command(layout: Layout, sizes: Sizes) -> list[str]:
    return [str(BIN / "ns-render"), "interpolate", "--load-config", str(layout.config),
            "--output-path", str(layout.video), "--pose-source", "train",
            "--interpolation-steps", str(sizes.interpolation_steps), "--frame-rate", "12"]  # fmt: skip


def run(args: list[str], env: dict[str, str] | None) -> float:
    """Prints a command, then runs it in `env` (None: a dry run, not run); exits on failure. Returns its duration."""
    print(flush=True)
    if env is None:
        print(f"$ {shown(args)}", flush=True)
        return 0.0
    seconds, status = run_command(args, env)
    if status != 0:
        sys.exit(f"demo: `{Path(args[0]).name}` failed; its output is above.")
    return seconds


def new_output_root(base: Path, create: bool = True) -> Path:
    """base/<timestamp>, with a suffix if that exists already: an earlier run is never overwritten."""
    stamp = time.strftime("%Y-%m-%d_%H%M%S")
    for suffix in ["", *(f"-{i}" for i in range(2, 1000))]:
        root = base / f"{stamp}{suffix}"
        if root.exists():
            continue
        if not create:
            return root
        try:
            root.mkdir(parents=True)
        except FileExistsError:  # a concurrent demo took it
            continue
        return root
    raise SystemExit(f"demo: no free output folder under {base}")


def readable(path: Path) -> Path:
    """`path` relative to the repository (the commands' working folder) when it lies inside it."""
    try:
        return path.relative_to(REPO)
    except ValueError:
        return path


def real_weights_commands(scene: str = "path/to/scene") -> str:
    """What a user types to make the same edit with real Stable Diffusion weights on a GPU."""
    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    return "\n".join([
        f"  huggingface-cli download {model}      # once, with network",
        "  export HF_HUB_OFFLINE=1                # then offline is fine",
        f"  ns-train pds --data {scene} \\",
        f"      --pipeline.source-prompt {shlex.quote(SOURCE_PROMPT)} \\",
        f"      --pipeline.target-prompt {shlex.quote(TARGET_PROMPT)} \\",
        f"      --pipeline.prior.model-id {model}",
        "  # stages at their defaults: 30000 reconstruction, 30000 PDS, 15000 refinement iterations;",
        "  # start from an existing nerfacto scene with --load-dir <run>/nerfstudio_models to skip stage 0",
        f"  ns-render interpolate --load-config outputs/<scene>/pds/<timestamp>/config.yml \\",
        "      --output-path edit.mp4 --pose-source train",
    ])  # fmt: skip


def video_frames(video: Path) -> str:
    """Frame count and length of a video, read with imageio-ffmpeg's ffmpeg."""
    try:
        import imageio_ffmpeg

        frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(video))
    except Exception as error:  # noqa: BLE001 (the summary says what went wrong instead of failing)
        return f"frame count unknown: {error}"
    return f"{frames} frames, {seconds:.1f} s"


def measure(layout: Layout) -> dict[str, StageRenderMeasures]:
    """The edit's result, measured (pds_nerfstudio/measure/fidelity_measures.py): how the object of every training view reads at
    the end of stages 1 and 2, and the background against the run's own reconstruction (renders/reconstruction)."""
    from pds_nerfstudio.measure.fidelity_measures import load_scene_truth, measure_stage_renders

    truth = load_scene_truth(layout.scene)
    renders = layout.run_dir / "renders"
    return {stage: measure_stage_renders(renders / stage, renders / "reconstruction", truth) for stage in ("pds", "refinement")}


def verdict(measures: dict) -> tuple[bool, str]:
    """Whether the edit reached its target after stage 2, and the measured lines that say so."""
    lines = []
    for stage, label in (("pds", "after stage 1"), ("refinement", "after stage 2")):
        reads, seen = measures[stage].reading(TARGET_COLOUR)
        others = sorted({c for c in measures[stage].colours if c and c != TARGET_COLOUR})
        lines.append(
            f"{label}: the sphere reads {TARGET_COLOUR} in {reads} of {seen} training views"
            + (f" (others read {', '.join(others)})" if others else "")
            + f"; background PSNR {measures[stage].background_psnr:.1f} dB against the reconstruction"
        )
    reads, seen = measures["refinement"].reading(TARGET_COLOUR)
    passed = seen > 0 and reads >= SUCCESS * seen
    lines.append(
        f"edit {'reached' if passed else 'FAILED to reach'} its target: {TARGET_COLOUR} in {reads} of {seen} views "
        f"after stage 2 (needs {SUCCESS:.0%})"
    )
    return passed, "\n".join(lines)


def summary(layout: Layout, prior_dir: Path, gpu: bool, durations: dict[str, float], measured: str = "") -> str:
    """Where everything is, what it took, what the edit measured, and the commands for real weights on a GPU."""
    run_dir = layout.run_dir
    renders = "\n".join(
        f"  stage {number} {stage + ':':<16}{run_dir / 'renders' / stage}/  ({_count(run_dir / 'renders' / stage)})"
        for number, stage in enumerate(("reconstruction", "pds", "refinement"))
    )
    timing = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations.items())
    video = f"{layout.video}  ({video_frames(layout.video)})" if layout.video.exists() else f"{layout.video} (missing)"
    return f"""
================================================================ demo done ({"GPU" if gpu else "CPU"})
took:        {timing}
scene:       {layout.scene}/  (images/ are the edit's source views; masks/, depth/, scene.json)
prior:       {prior_dir}/  (the toy Stable Diffusion trained on procedural renders)
run folder:  {run_dir}/
config.yml:  {layout.config}
checkpoint:  {run_dir / "nerfstudio_models"}/  ({_count(run_dir / "nerfstudio_models", "*.ckpt")})
renders of every training view at the end of each stage:
{renders}
logs:        {run_dir / "logs"}/  ({_count(run_dir / "logs")}: stage 1's source | render | gradient magnitude)
             tensorboard --logdir {run_dir}
video:       {video}
look around: ns-viewer --load-config {layout.config}

measured (scripts/fidelity.py measures edits against SDS and DDS over many scenes):
{measured}

The same edit with real Stable Diffusion weights on a GPU:
{real_weights_commands()}
"""


def _count(folder: Path, pattern: str = "*.png") -> str:
    return f"{len(list(folder.glob(pattern)))} files" if folder.is_dir() else "not written"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--output-root", type=Path, default=REPO / "demo_outputs", help="folder of the demo runs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.monotonic()
    import torch

    from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir

    gpu = torch.cuda.is_available()
    sizes = sizes_for(gpu)
    layout = Layout(readable(new_output_root(args.output_root.absolute(), create=not args.dry_run)))
    prior_dir = embedded_toy_prior_dir()
    print(f"demo: {'GPU' if gpu else 'CPU'} sizes; outputs in {layout.root}; embedded prior {prior_dir}")
    print(f"demo: stages of {sizes.reconstruction} + {sizes.pds} + {sizes.refinement} iterations "
          f"(reconstruction + PDS + refinement), {SOURCE_PROMPT!r} -> {TARGET_PROMPT!r}")  # fmt: skip
    env = None if args.dry_run else command_env(one_thread=not gpu)
    durations = {
        "scene": run(scene_command(layout), env),
        "ns-train pds": run(train_command(layout, prior_dir, sizes), env),
        "ns-render": run(render_command(layout, sizes), env),
    }
    if args.dry_run:
        print(f"\n(dry run: nothing was run; outputs would go to {layout.root})")
        return
    durations["total"] = time.monotonic() - start
    passed, measured = verdict(measure(layout))
    print(summary(layout, prior_dir, gpu, durations, measured))
    if not passed:
        sys.exit("demo: the edit did not reach its target (measured above); its renders are in the run folder.")


if __name__ == "__main__":
    main()
