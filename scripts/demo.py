"""`make demo`: a procedural scene, reconstructed and rendered with nerfstudio's own commands.

Runs on CPU in a few minutes. Each step is the command a user would type; they are printed
before they run. Outputs go under demo_outputs/ (a new timestamped run each time).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

from pds_nerfstudio.fixtures.procedural_scene import make_scene

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMALL_NERFACTO = [
    "--pipeline.datamanager.train-num-rays-per-batch", "512",
    "--pipeline.model.eval-num-rays-per-chunk", "4096",
    "--pipeline.model.num-nerf-samples-per-ray", "24",
    "--pipeline.model.num-proposal-samples-per-ray", "32", "16",
    "--pipeline.model.hidden-dim", "32",
    "--pipeline.model.log2-hashmap-size", "15",
    "--steps-per-eval-image", "100000", "--steps-per-eval-batch", "100000", "--steps-per-eval-all-images", "100000",
    "--vis", "tensorboard",
]  # fmt: skip


def run(args: list[str]) -> None:
    """Prints a command as a user would type it, then runs it; exits on failure."""
    print(f"\n$ {shlex.join([Path(args[0]).name, *args[1:]])}", flush=True)
    if subprocess.call(args, cwd=REPO) != 0:
        sys.exit(f"demo: `{Path(args[0]).name}` failed; its output is above.")


def main() -> None:
    root = REPO / "demo_outputs" / time.strftime("%Y-%m-%d_%H%M%S")
    scene = root / "scene"
    info = make_scene(scene, size=64, num_views=24, objects=("red sphere", "blue cube"))
    print(f"scene: {len(info.image_paths)} views of 64x64 in {scene}")
    run([str(BIN / "ns-train"), "pds-nerfacto", "--data", str(scene), "--output-dir", str(root / "runs"),
         "--timestamp", "recon", "--max-num-iterations", "200", "--steps-per-save", "200", *SMALL_NERFACTO])  # fmt: skip
    config = root / "runs" / "scene" / "pds-nerfacto" / "recon" / "config.yml"
    video = root / "orbit.mp4"
    run([str(BIN / "ns-render"), "interpolate", "--load-config", str(config), "--output-path", str(video),
         "--pose-source", "train", "--interpolation-steps", "3", "--frame-rate", "12"])  # fmt: skip
    print(f"\nscene:      {scene}\nrun config: {config}\nvideo:      {video}")


if __name__ == "__main__":
    main()
