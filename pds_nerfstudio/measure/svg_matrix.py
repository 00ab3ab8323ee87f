"""The SVG edit matrix: drawings whose right answer is known, edited by PDS, SDS and DDS at equal budgets.

    python scripts/svg_matrix.py OUT_DIR [--steps 1000] [--guidance-scale 100] [--methods pds sds dds]
                                 [--prior PRIOR_DIR] [--edits NAME ...] [--seeds 0 1 ...]

Each edit is a drawing of flat shapes (:mod:`pds_nerfstudio.synthetic.flat_shapes`) with a caption that names them,
and a target caption that changes one shape's colour. It runs the edit of ``pds-edit-svg`` (the same
:func:`pds_nerfstudio.svg.edit.edit_drawing`, points and colours optimised, the supplement's timestep range of each
method) with the toy vector prior, no prompt suffix (the toy prior knows only its captions), and measures:

- target reached: the edited shape's fill as a viewer sees it (its colour at its opacity over what is under it:
  the background rectangle or white) is nearest the target colour among the palette's 12, and its RGB distance to
  that colour;
- the other shapes kept: their fills' RGB distance to the source's, and how far their control points moved (the
  largest displacement, as a fraction of the canvas side); the edited shape's own displacement too;
- the background kept: PSNR of the edited render against the source render over the pixels that no shape covers
  before or after the edit (a background rectangle, where there is one, counts as background).

Writes OUT_DIR/results.json, OUT_DIR/table.md and OUT_DIR/matrix.png (a row per edit: source, then each method);
with several seeds, those of each seed in OUT_DIR/seedN and one table over every seed in OUT_DIR/table.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pds_nerfstudio.measure.fidelity_measures import nearest_colour_rgb as nearest_colour  # flat fills: no shading to divide out
from pds_nerfstudio.synthetic.flat_shapes import FlatShape, caption_of, drawing_svg
from pds_nerfstudio.synthetic.procedural_scene import PALETTE

CANVAS = 256.0
PALE = (0.93, 0.91, 0.84)


@dataclass(frozen=True)
class SvgEdit:
    """A drawing, which of its shapes the edit names, and that shape's target colour."""

    name: str
    shapes: tuple[FlatShape, ...]
    edited: int
    """Index of the shape whose colour changes."""
    target_colour: str
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def source_prompt(self) -> str:
        return caption_of(self.shapes)

    @property
    def target_prompt(self) -> str:
        shapes = list(self.shapes)
        shapes[self.edited] = FlatShape(self.target_colour, shapes[self.edited].shape, (0.5, 0.5), 0.5)
        return caption_of(tuple(shapes))

    def svg(self) -> str:
        ids = tuple(f"{s.colour}-{s.shape}" for s in self.shapes)
        return drawing_svg(self.shapes, CANVAS, self.background, ids)


def _one(colour: str, shape: str, size: float = 0.5, aspect: float = 1.0) -> FlatShape:
    return FlatShape(colour, shape, (0.5, 0.5), size, aspect)


def _left(colour: str, shape: str, size: float = 0.3, aspect: float = 1.0) -> FlatShape:
    return FlatShape(colour, shape, (0.27, 0.5), size, aspect)


def _right(colour: str, shape: str, size: float = 0.3, aspect: float = 1.0) -> FlatShape:
    return FlatShape(colour, shape, (0.73, 0.5), size, aspect)


EDITS: tuple[SvgEdit, ...] = (
    SvgEdit("red-circle-to-blue", (_one("red", "circle"),), 0, "blue"),
    SvgEdit("green-square-to-yellow", (_one("green", "square", 0.45),), 0, "yellow"),
    SvgEdit("purple-rectangle-to-orange", (_one("purple", "rectangle", 0.7, 2.2),), 0, "orange", PALE),
    SvgEdit("two-shapes-circle-to-green", (_left("red", "circle"), _right("blue", "square", 0.27)), 0, "green"),
    SvgEdit("two-shapes-square-to-pink", (_left("yellow", "circle"), _right("cyan", "square", 0.27)), 1, "pink"),
    SvgEdit("two-shapes-rectangle-to-red", (_left("orange", "rectangle", 0.4, 2.2), _right("purple", "circle")), 0, "red", PALE),
)  # fmt: skip
"""The matrix: three one-shape edits (one on a pale background rectangle), three where only one of two shapes must
change."""


@dataclass
class EditMeasure:
    edit: str
    method: str
    target_colour: str
    reads_as: str
    reached: bool
    target_distance: float
    edited_displacement: float
    """Largest control-point displacement of the edited shape, fraction of the canvas side."""
    others_colour_change: float | None
    """Largest fill RGB distance of the shapes the edit does not name (None: there are none)."""
    others_displacement: float | None
    background_psnr: float
    seconds: float
    on_pale: bool = False
    """The drawing sits on a pale background rectangle, a shape the edit may repaint (on white it cannot)."""
    seed: int = 0


def measure(edit: SvgEdit, source, edited, method: str, seconds: float, seed: int = 0) -> EditMeasure:  # noqa: ANN001
    from pds_nerfstudio.svg.changes import shape_changes
    from pds_nerfstudio.svg.rasterizer import render, render_alpha

    changes = shape_changes(source, edited)
    shapes = [c for c in changes if c.name != "background"]
    target = shapes[edit.edited]
    others = [c for i, c in enumerate(shapes) if i != edit.edited]
    after = seen_fill(edited, target.index, [c.index for c in changes if c.name == "background"])
    canvas = max(source.width, source.height)
    size = 128
    with torch.no_grad():
        drawn = [i for i, c in enumerate(changes) if c.name != "background"]
        cover = [render_alpha(_only(scene, drawn), size, size) for scene in (source, edited)]
        outside = (cover[0] < 0.01) & (cover[1] < 0.01)
        error = (render(edited, size, size) - render(source, size, size)).square().mean(0)[outside]
    mse = float(error.mean()) if error.numel() else float("nan")
    return EditMeasure(
        edit=edit.name, method=method, target_colour=edit.target_colour, reads_as=nearest_colour(after),
        reached=nearest_colour(after) == edit.target_colour,
        target_distance=math.dist(PALETTE[edit.target_colour], after[:3]),
        edited_displacement=target.displacement_max / canvas,
        others_colour_change=max((c.fill_distance for c in others), default=None),
        others_displacement=max((c.displacement_max / canvas for c in others), default=None),
        background_psnr=10 * math.log10(1 / max(mse, 1e-10)), seconds=seconds, on_pale=edit.background != (1.0, 1.0, 1.0), seed=seed,
    )  # fmt: skip


def seen_fill(scene, shape: int, backgrounds: list[int]) -> tuple[float, float, float]:  # noqa: ANN001
    """The colour a viewer sees of a shape's fill: its RGB at its alpha over the background rectangle (itself over
    white), or over white."""
    under = torch.ones(3, dtype=scene.fill_colour.dtype)
    for k in backgrounds:
        rgba = scene.fill_colour[k].detach().cpu()
        under = rgba[:3] * rgba[3] + under * (1 - rgba[3])
    rgba = scene.fill_colour[shape].detach().cpu()
    return tuple((rgba[:3] * rgba[3] + under * (1 - rgba[3])).tolist())  # type: ignore[return-value]


def remeasure(out_dir: Path) -> list[EditMeasure]:
    """The measures of a finished matrix, again, from the SVG files it wrote (and its timings)."""
    from pds_nerfstudio.svg.parse import load_svg

    results = json.loads((out_dir / "results.json").read_text())
    seconds = {(m["edit"], m["method"]): m["seconds"] for m in results["measures"]}
    by_name = {edit.name: edit for edit in EDITS}
    measures = []
    for entry in results["edits"]:
        edit = by_name[entry["name"]]
        source = load_svg(out_dir / f"{edit.name}.svg")
        for method in results["methods"]:
            edited = load_svg(out_dir / f"{edit.name}.{method}.svg")
            measures.append(measure(edit, source, edited, method, seconds[(edit.name, method)], results.get("seed", 0)))
    results["measures"] = [asdict(m) for m in measures]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "table.md").write_text(table(measures, results["methods"]))
    return measures


def _only(scene, shapes: list[int]):  # noqa: ANN001, ANN202
    """The scene with the colours of every shape not in `shapes` made transparent."""
    keep = torch.zeros(scene.num_shapes, dtype=torch.bool)
    keep[shapes] = True
    fill, stroke = scene.fill_colour.clone(), scene.stroke_colour.clone()
    fill[~keep, 3] = 0
    stroke[~keep, 3] = 0
    return scene.with_parameters(fill_colour=fill, stroke_colour=stroke)


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(measures: list[EditMeasure], methods: list[str]) -> str:
    """The summary (a row per method, over every edit and seed) and the per-edit rows, in markdown."""
    seeds = sorted({m.seed for m in measures})
    lines = ["| method | target reached | fill distance to target | other shapes: colour change (max) | "
             "other shapes: points moved (% of canvas) | edited shape: points moved (% of canvas) | background PSNR (dB) | "
             "background PSNR, on a pale rectangle (dB) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in methods:
        rows = [m for m in measures if m.method == method]
        others = _mean([m.others_displacement for m in rows])
        pale = _mean([m.background_psnr for m in rows if m.on_pale])
        lines.append(
            f"| {method.upper()} | {sum(m.reached for m in rows)} of {len(rows)} | {_fmt(_mean([m.target_distance for m in rows]), '.3f')} "
            f"| {_fmt(_mean([m.others_colour_change for m in rows]), '.3f')} | {_fmt(None if others is None else 100 * others, '.1f')} "
            f"| {_fmt(100 * _mean([m.edited_displacement for m in rows]), '.1f')} | {_fmt(_mean([m.background_psnr for m in rows]), '.1f')} "
            f"| {_fmt(pale, '.1f')} |"
        )  # fmt: skip
    seed_head, seed_rule = ("seed | ", "---|") if len(seeds) > 1 else ("", "")
    lines += ["", f"| edit | {seed_head}method | reads as | fill distance | other shapes: colour / points (%) | edited shape: points (%) | background PSNR | seconds |",
              f"|---|{seed_rule}---|---|---|---|---|---|---|"]  # fmt: skip
    for m in measures:
        others = "-" if m.others_colour_change is None else f"{m.others_colour_change:.3f} / {100 * m.others_displacement:.1f}"
        seed = f"{m.seed} | " if len(seeds) > 1 else ""
        lines.append(f"| {m.edit} | {seed}{m.method.upper()} | {m.reads_as}{'' if m.reached else ' (missed)'} | {m.target_distance:.3f} "
                     f"| {others} | {100 * m.edited_displacement:.1f} | {m.background_psnr:.1f} | {m.seconds:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run_matrix(out_dir: Path, prior_dir: Path, methods: list[str], steps: int, guidance_scale: float,
               edits: tuple[SvgEdit, ...] = EDITS, seed: int = 0, log=print) -> list[EditMeasure]:  # noqa: ANN001
    """Run every edit with every method; write the results, the table and the picture."""
    import svgelements

    from pds_nerfstudio.cli.common import load_prior, save_sheet
    from pds_nerfstudio.cli.edit_svg import STEP_RATIOS
    from pds_nerfstudio.guidance.options import GuidanceOptions
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPriorConfig
    from pds_nerfstudio.svg.edit import Optimisation, edit_drawing
    from pds_nerfstudio.svg.parse import scene_of
    from pds_nerfstudio.svg.rasterizer import render
    from pds_nerfstudio.svg.write import write_svg

    out_dir.mkdir(parents=True, exist_ok=True)
    prior = load_prior(DiffusionPriorConfig(model_id=str(prior_dir), dtype="fp32", device="cpu"))
    size = (prior.native_resolution, prior.native_resolution)
    measures, rows = [], []
    for edit in edits:
        (out_dir / f"{edit.name}.svg").write_text(edit.svg())
        source = scene_of(svgelements.SVG.parse(io.StringIO(edit.svg())), edit.name)
        panels = [render(source, 128, 128)]
        for method in methods:
            low, high = STEP_RATIOS[method]
            guidance = GuidanceOptions(source_prompt=edit.source_prompt, target_prompt=edit.target_prompt, method=method,
                                       guidance_scale=guidance_scale, min_step_ratio=low, max_step_ratio=high)  # fmt: skip
            generator = torch.Generator().manual_seed(seed)
            torch.manual_seed(seed)
            started = time.perf_counter()
            edited = edit_drawing(source, prior, guidance, Optimisation(steps=steps), size, generator)
            seconds = time.perf_counter() - started
            write_svg(edited, out_dir / f"{edit.name}.{method}.svg")
            result = measure(edit, source, edited, method, seconds, seed)
            measures.append(result)
            with torch.no_grad():
                panels.append(render(edited, 128, 128))
            log(f"{edit.name} {method}: reads as {result.reads_as} (target {edit.target_colour}), background "
                f"{result.background_psnr:.1f} dB, {seconds:.0f} s")  # fmt: skip
        rows.append(torch.cat(panels, dim=-1))
    save_sheet([torch.cat(rows, dim=-2)], out_dir / "matrix.png")
    (out_dir / "results.json").write_text(json.dumps({
        "steps": steps, "guidance_scale": guidance_scale, "methods": methods, "seed": seed, "prior": str(prior_dir),
        "edits": [{"name": e.name, "source": e.source_prompt, "target": e.target_prompt} for e in edits],
        "measures": [asdict(m) for m in measures]}, indent=2) + "\n")  # fmt: skip
    (out_dir / "table.md").write_text(table(measures, methods))
    return measures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The SVG edit matrix: PDS, SDS and DDS on drawings with known answers.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=float, default=100.0)
    parser.add_argument("--methods", nargs="+", default=["pds", "sds", "dds"], choices=["pds", "sds", "dds"])
    parser.add_argument("--prior", type=Path, default=None, help="prior folder (default: the toy vector prior)")
    parser.add_argument("--edits", nargs="+", default=None, choices=[e.name for e in EDITS])
    parser.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0],
                        help="one matrix per seed (in OUT_DIR/seedN when more than one), and one table over them all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--remeasure", action="store_true", help="measure a finished OUT_DIR again from its SVG files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.remeasure:
        folders = sorted(args.out_dir.glob("seed*/")) or [args.out_dir]
        measures = [m for folder in folders for m in remeasure(folder)]
        methods = json.loads((folders[0] / "results.json").read_text())["methods"]
    else:
        from pds_nerfstudio.synthetic.vector_prior import EMBEDDED_VECTOR_PRIOR

        edits = EDITS if args.edits is None else tuple(e for e in EDITS if e.name in args.edits)
        measures, methods = [], args.methods
        for seed in args.seeds:
            folder = args.out_dir / f"seed{seed}" if len(args.seeds) > 1 else args.out_dir
            measures += run_matrix(folder, args.prior or EMBEDDED_VECTOR_PRIOR, args.methods, args.steps,
                                   args.guidance_scale, edits, seed, log=lambda m: print(m, flush=True))  # fmt: skip
    summary = table(measures, methods)
    if len({m.seed for m in measures}) > 1:
        (args.out_dir / "table.md").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
