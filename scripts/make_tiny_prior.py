"""Write a randomly initialised Stable Diffusion pipeline folder, offline.

    python scripts/make_tiny_prior.py OUT_DIR [--architecture tiny|sd15] [--seed N] [--dtype float16] [--overwrite]

The folder loads with ``StableDiffusionPipeline.from_pretrained(OUT_DIR)`` (``HF_HUB_OFFLINE=1`` is fine).
``tiny`` is under 4 MB, for CPU tests; ``sd15`` is SD 1.5's architecture (about 4.3 GB in float32, half that in
float16) for GPU benchmarks and memory dry runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, build the pipeline and list what was written; return the exit status (2 on errors)."""
    parser = argparse.ArgumentParser(description="Write a randomly initialised Stable Diffusion pipeline folder.")
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing unless --overwrite)")
    parser.add_argument("--architecture", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier pipeline in OUT_DIR")
    args = parser.parse_args(argv)

    # Imported after parsing so that --help and usage errors do not wait for torch and diffusers.
    from pds_nerfstudio.synthetic.tiny_prior import build_tiny_prior

    try:
        out_dir = build_tiny_prior(args.out_dir, args.architecture, args.seed, args.dtype, args.overwrite)
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    files = sorted(path for path in out_dir.rglob("*") if path.is_file())
    for path in files:
        print(f"{path.stat().st_size:>14,d}  {path}")
    total = sum(path.stat().st_size for path in files)
    print(f"wrote a {args.architecture} ({args.dtype}, seed {args.seed}) pipeline to {out_dir}: {total / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
