"""The README's picture from a fidelity run: for each edit (seed 0), a view of the scene, PDS on a NeRF and PDS on
splats after both stages.

    python scripts/readme_picture.py FIDELITY_OUT docs/images/edits.png [--view 2] [--columns 2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pds_nerfstudio.measure.fidelity_report import edit_caption

PANELS = (("scene", "scene"), ("pds/refinement", "PDS, NeRF"), ("pds-splat/refinement", "PDS, splats"))
"""(key in a chain's renders.npz, caption) of each tile of an edit."""


def edit_panels(root: Path, view: int) -> tuple[str, list[np.ndarray]]:
    renders = np.load(root / "renders.npz")
    chain = json.loads((root / "measures.json").read_text())["chain"]
    missing = [key for key, _ in PANELS if key not in renders]
    if missing:
        raise ValueError(f"{root} has no {', '.join(missing)} renders (run the benchmark with pds and pds-splat)")
    return edit_caption(chain), [renders[key][view] for key, _ in PANELS]


def draw(edits: list[tuple[str, list[np.ndarray]]], columns: int, scale: int = 2) -> Image.Image:
    tile = edits[0][1][0].shape[0] * scale
    gap, title, columns = 12, 14, min(columns, len(edits))
    group = tile * len(PANELS)
    rows = -(-len(edits) // columns)
    image = Image.new("RGB", (columns * group + (columns - 1) * gap, rows * (tile + 2 * title)), "white")
    pen = ImageDraw.Draw(image)
    for index, (caption, panels) in enumerate(edits):
        x, y = (index % columns) * (group + gap), (index // columns) * (tile + 2 * title)
        pen.text((x + 3, y + 1), caption, fill="black")
        for p, (panel, (_, label)) in enumerate(zip(panels, PANELS)):
            image.paste(Image.fromarray(panel).resize((tile, tile), Image.NEAREST), (x + p * tile, y + title))
            pen.text((x + p * tile + 3, y + title + tile + 1), label, fill="black")
    return image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fidelity_out", type=Path, help="an output folder of scripts/fidelity.py")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--view", type=int, default=2, help="index of the view shown (sorted by image name)")
    parser.add_argument("--columns", type=int, default=2, help="edits per row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    roots = sorted(p.parent for p in args.fidelity_out.glob(f"*/seed{args.seed}/renders.npz"))
    if not roots:
        print(f"readme_picture: error: {args.fidelity_out} holds no measured chain of seed {args.seed}", file=sys.stderr)
        return 2
    try:
        image = draw([edit_panels(root, args.view) for root in roots], args.columns)
    except ValueError as err:
        print(f"readme_picture: error: {err}", file=sys.stderr)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output)
    print(f"wrote {args.output} ({len(roots)} edits)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
