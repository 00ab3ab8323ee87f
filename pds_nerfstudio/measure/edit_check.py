"""A short edit through every stage at full size, then `ns-render`: a crash anywhere on a user's path shows.

    python scripts/edit_check.py OUT --scene ../shared/data/in2n_face      # GPU: SD 1.5 architecture, fp16
    python scripts/edit_check.py OUT --prior tiny --options <CPU sizes>   # CPU rehearsal

Runs the commands a user types, each printed before it runs: `ns-train pds` on the scene with a
prior of Stable Diffusion 1.5's architecture (random weights built offline: the same compute and the
same dtypes as real weights) for a few iterations of each stage (reconstruction, PDS, SDEdit
refinement), with everything else at the `pds` defaults (on CUDA: the fp16 prior, the compiled hash
encoding, deferred back-propagation under nerfstudio's mixed precision), then `ns-render dataset` of
the held-out views; then the same with `ns-train pds-splat` (gsplat's rasteriser on CUDA, the plain-torch
one on CPU). It checks what each wrote: a checkpoint at the end of every stage, no non-finite step, and
frames of the held-out views at the scene's size. It prints a table of the steps, their
times and what was checked (also written to OUT/edit_check.md) and exits non-zero when a check failed.

The scene folder is only read. Where pds_nerfstudio is importable but not installed (the offline GPU
machine), the method reaches `ns-train` through nerfstudio's NERFSTUDIO_METHOD_CONFIGS.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from pds_nerfstudio.commands import command_env, console_script, run_command
from pds_nerfstudio.data.scene_checks import read_header, read_transforms, transforms_path, validate_scene
from pds_nerfstudio.edit.stages import StageSchedule
from pds_nerfstudio.synthetic.small_nerfacto import NO_EVALUATION_OPTIONS
from pds_nerfstudio.synthetic.tiny_prior import build_tiny_prior
from pds_nerfstudio.measure import FACE_SCENE

SOURCE_PROMPT, TARGET_PROMPT = "a photo of a man", "a photo of a man with a red beard"
RUN_TIMESTAMP = "check"


@dataclass
class Step:
    """One command of the check: what ran, how long it took, and what was found afterwards."""

    name: str
    seconds: float
    ok: bool
    found: str


def resolve_prior(choice: str, out_dir: Path) -> Path:
    """sd15 or tiny: a randomly initialised pipeline of that architecture built here; else a pipeline folder."""
    if choice not in ("sd15", "tiny"):
        return Path(choice)
    dtype = "float16" if choice == "sd15" else "float32"
    return build_tiny_prior(out_dir / f"prior-{choice}", architecture=choice, torch_dtype=dtype)


METHODS = ("pds", "pds-splat")


def train_command(
    method: str, scene: Path, prior: Path, runs: Path, iterations: list[int], options: list[str]
) -> list[str]:
    reconstruction, pds, refinement = iterations
    return [
        console_script("ns-train"), method, "--data", str(scene), "--output-dir", str(runs), "--timestamp", RUN_TIMESTAMP,
        "--pipeline.source-prompt", SOURCE_PROMPT, "--pipeline.target-prompt", TARGET_PROMPT,
        "--pipeline.prior.model-id", str(prior),
        "--pipeline.reconstruction-iterations", str(reconstruction), "--pipeline.pds-iterations", str(pds),
        "--pipeline.refinement-iterations", str(refinement), "--steps-per-save", str(sum(iterations)),
        "--vis", "tensorboard", *NO_EVALUATION_OPTIONS, *options,
    ]  # fmt: skip


def render_command(config: Path, frames: Path) -> list[str]:
    return [console_script("ns-render"), "dataset", "--load-config", str(config), "--output-path", str(frames),
            "--split", "test", "--rendered-output-names", "rgb", "--image-format", "png"]  # fmt: skip


def run(name: str, command: list[str], env: dict[str, str], log: Path) -> tuple[float, int]:
    """Runs a command with its output on the console and in ``log``; returns its seconds and exit status."""
    seconds, status = run_command(command, env, log, echo=True, cwd=None)
    print(f"{name}: exit status {status} after {seconds:.0f} s", flush=True)
    return seconds, status


def check_training(run_dir: Path, log: Path, iterations: list[int], status: int) -> tuple[bool, str]:
    """A checkpoint at the last step of every stage (where the trainer keeps one), and no non-finite step."""
    schedule = StageSchedule(*iterations)
    steps = sorted(int(path.stem.split("-")[1]) for path in (run_dir / "nerfstudio_models").glob("step-*.ckpt"))
    missing = [step for step in range(schedule.total) if schedule.is_last_step_of_stage(step) and step not in steps]
    nonfinite = log.read_text().count("non-finite")
    found = f"checkpoints at steps {', '.join(map(str, steps)) or 'none'}; {nonfinite} non-finite steps"
    return status == 0 and not missing and nonfinite == 0, found


def check_frames(frames: Path, size: tuple[int, int], status: int) -> tuple[bool, str]:
    """Frames of the held-out views: at least one, each at the scene's size and not of one colour."""
    paths = sorted((frames / "test").rglob("*.png"))  # test/rgb/<view>.png; test/rgb.png when one view is held out
    images = [np.asarray(Image.open(path)) for path in paths]
    shapes = {(image.shape[1], image.shape[0]) for image in images}
    spread = min((float(image.std()) for image in images), default=0.0)
    found = f"{len(images)} held-out frames, sizes {sorted(shapes)}, least pixel std {spread:.1f}"
    return status == 0 and len(images) > 0 and shapes == {size} and spread > 0, found


def image_size(scene: Path) -> tuple[int, int]:
    """(width, height) of the scene's images (validate_scene has checked they share one)."""
    transforms = transforms_path(scene)
    return read_header(transforms.parent / read_transforms(transforms)["frames"][0]["file_path"]).size


def report(steps: list[Step], context: str) -> str:
    lines = [context, "", "| step | seconds | ok | found |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.seconds:.0f} | {'yes' if s.ok else 'NO'} | {s.found} |" for s in steps]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing)")
    parser.add_argument("--scene", type=Path, default=FACE_SCENE, help="a nerfstudio scene folder (default: the face scene)")
    parser.add_argument("--prior", default="sd15", help="sd15, tiny (random weights, built here) or a pipeline folder")
    parser.add_argument("--iterations", type=int, nargs=3, default=[30, 20, 20], metavar=("RECON", "PDS", "REFINE"),
                        help="iterations of each stage (stage 2 SDEdits a view every 10 by default)")  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="the edits to run")
    parser.add_argument("--splat-options", default="", metavar="'OPTIONS'",
                        help="more ns-train pds-splat options, one quoted string (--splat-options='--a 1 --b 2')")
    parser.add_argument("--options", nargs=argparse.REMAINDER, default=[], help="more ns-train pds options, last")
    args = parser.parse_args(argv)
    try:
        validate_scene(args.scene)
    except ValueError as problem:
        parser.error(f"--scene: {problem}")
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        parser.error(f"{args.out_dir} is not empty: give a new folder")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    env = command_env(one_thread=not torch.cuda.is_available())
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    steps: list[Step] = []

    started = time.monotonic()
    prior = resolve_prior(args.prior, args.out_dir)
    steps.append(Step(f"prior {args.prior}", time.monotonic() - started, True, str(prior)))

    for method in args.methods:
        first = method == "pds"  # its logs and frames keep the names they had before splats were checked
        tag, suffix = ("" if first else f"-{method}"), f" ({method})"
        options = args.options if first else shlex.split(args.splat_options)
        command = train_command(method, args.scene, prior, args.out_dir / "runs", args.iterations, options)
        train_log = args.out_dir / f"ns-train{tag}.log"
        seconds, status = run(f"ns-train {method}", command, env, train_log)
        run_dir = args.out_dir / "runs" / args.scene.name / method / RUN_TIMESTAMP
        steps.append(Step(f"ns-train {method}, {' + '.join(map(str, args.iterations))} iterations", seconds,
                          *check_training(run_dir, train_log, args.iterations, status)))  # fmt: skip

        frames = args.out_dir / f"frames{tag}"
        seconds, status = run("ns-render", render_command(run_dir / "config.yml", frames), env,
                              args.out_dir / f"ns-render{tag}.log")  # fmt: skip
        steps.append(Step(f"ns-render dataset --split test{suffix}", seconds,
                          *check_frames(frames, image_size(args.scene), status)))  # fmt: skip

    text = report(steps, f"Edit check on {device}, scene {args.scene.name}, prior {args.prior}, torch {torch.__version__}")
    (args.out_dir / "edit_check.md").write_text(text + "\n")
    print(text)
    return 0 if all(step.ok for step in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
