"""The fidelity matrix's report: its tables (markdown), the goals with their measured numbers, and the
side-by-side picture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pds_nerfstudio.measure.fidelity_chain import KINDS, SUCCESS, changed_word, is_shape_edit

SHAPE_IOU_GOAL = 0.8
"""A shape edit's final silhouette IoU against the target shape's true silhouette (issue 25's goal)."""


def edit_caption(chain: dict) -> str:
    """'red sphere -> blue' (or -> cube) for a chain's settings (its measures.json "chain")."""
    return f"{chain['source']} -> {changed_word(chain['source'], chain['target'])}"


def shape_chain(result: dict) -> bool:
    """Whether a chain's measures (its measures.json) are of a shape edit."""
    return is_shape_edit(result["chain"]["source"], result["chain"]["target"])


def spread(values: list[float], percent: bool = False, digits: int = 1) -> str:
    """Mean, and the range over seeds when there is more than one value."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    show = (lambda v: f"{100 * v:.0f}%") if percent else (lambda v: f"{v:.{digits}f}")
    text = show(float(np.mean(finite)))
    return text if len(finite) == 1 else f"{text} ({show(min(finite))}-{show(max(finite))})"


def iterations_run(runs: list[dict]) -> str:
    """Mean iterations of stages 1 and 2 over `runs` (their measures), as run: shorter than the caps where a stage
    ended on convergence."""
    counts = [run["iterations"] for run in runs if "iterations" in run]  # measures written before stage ends: none
    if not counts:
        return "n/a"
    return f"{np.mean([c['pds'] for c in counts]):.0f} + {np.mean([c['refinement'] for c in counts]):.0f}"


def report(results: list[dict], methods: list[str], args_text: str) -> tuple[str, dict]:
    """The tables (markdown) and the goals' numbers: colour edits, then shape edits (when the matrix has them),
    per edit, and the source reconstructions."""
    colour_results = [r for r in results if not shape_chain(r)]
    shape_results = [r for r in results if shape_chain(r)]
    lines, goals = colour_table(colour_results, methods) if colour_results else ([], {})
    if shape_results:
        shape_lines, shape_goals = shape_table(shape_results, methods)
        lines += ([""] if lines else []) + shape_lines
        goals["shape"] = shape_goals
    variant_goals = variant_comparison(results, methods)
    if variant_goals:
        goals["variants"] = variant_goals
    return "\n".join([*lines, *edit_rows(results, methods), *source_lines(results), "", args_text]), goals


FEWER_ITERATIONS = 1 / 3
"""Issue 24's goal: a faster setting runs at most this share of the fixed schedule's edit iterations ..."""
EQUAL_SUCCESS_POINTS = 1.0
"""... reading as the target in at most this many points fewer views (stage 2, mean of training and held-out) ..."""
EQUAL_BACKGROUND_DB = 0.5
"""... and keeping the background within this many dB (stage 2, training views)."""


def variant_comparison(results: list[dict], labels: list[str]) -> dict:
    """Each variant ("pds+NAME", "pds-splat+NAME") against its method at the matrix's options, on the chains that ran
    both: mean iterations run (stages 1 + 2), target success after stage 2 (mean of training and held-out views; a
    shape edit's is the target shape), background PSNR after stage 2, on shape edits the IoU against the target
    shape, and the wall time of stages 1 + 2 where every run timed them. Chains that ran only one of the two are
    left out."""
    out = {}
    for label in labels:
        base = label.partition("+")[0]
        if "+" not in label or base not in labels:
            continue
        pairs = [(r["runs"][base], r["runs"][label], shape_chain(r)) for r in results
                 if base in r["runs"] and label in r["runs"]]  # fmt: skip
        if not pairs:
            continue

        def mean(pick, which, only_shape=False):
            values = [pick(pair[which]) for pair in pairs if pair[2] or not only_shape]
            return float(np.mean(values)) if values and None not in values else None

        def iterations(run):
            return run["iterations"]["pds"] + run["iterations"]["refinement"]

        def success(run):
            return (run["refinement"]["train"]["attribute_success"] + run["refinement"]["eval"]["attribute_success"]) / 2

        def background(run):
            return run["refinement"]["train"]["background_psnr"]

        def target_iou(run):
            return run["refinement"]["train"].get("target_shape_iou")

        def seconds(run):  # stages 1 + 2; None where a run did not time both (written before they were timed)
            timed = [run.get("seconds", {}).get(stage) for stage in ("pds", "refinement")]
            return None if None in timed else sum(timed)

        out[label] = {
            "against": base, "chains": len(pairs),
            **{f"{name}_{side}": mean(pick, index, only_shape=name == "target_iou")
               for name, pick in (("iterations", iterations), ("success", success), ("background", background),
                                  ("target_iou", target_iou), ("seconds", seconds))
               for side, index in (("base", 0), ("variant", 1))},
        }  # fmt: skip
    return out


def variant_goal_lines(goals: dict) -> list[str]:
    """Issue 24's goal for each variant: at most a third of the iterations at equal fidelity."""
    lines = []
    for label, g in goals.items():
        share = g["iterations_variant"] / g["iterations_base"]
        points = 100 * (g["success_variant"] - g["success_base"])
        db = g["background_variant"] - g["background_base"]
        met = share <= FEWER_ITERATIONS + 1e-9 and points >= -EQUAL_SUCCESS_POINTS and db >= -EQUAL_BACKGROUND_DB
        shape = (f", IoU against the target shape {g['target_iou_variant']:.3f} against {g['target_iou_base']:.3f}"
                 if g["target_iou_base"] is not None else "")  # fmt: skip
        timed = (f" in {g['seconds_variant']:.0f} s against {g['seconds_base']:.0f} s"
                 if g.get("seconds_base") is not None and g.get("seconds_variant") is not None else "")  # fmt: skip
        lines.append(
            f"- {label} against {g['against']} ({g['chains']} chains): {g['iterations_variant']:.0f} of "
            f"{g['iterations_base']:.0f} iterations ({100 * share:.0f}%){timed}, reads as target {100 * g['success_variant']:.0f}% "
            f"against {100 * g['success_base']:.0f}% ({points:+.0f} points), background {g['background_variant']:.1f} "
            f"against {g['background_base']:.1f} dB ({db:+.1f}){shape} (goal: at most a third of the iterations, success "
            f"within {EQUAL_SUCCESS_POINTS:g} point, background within {EQUAL_BACKGROUND_DB:g} dB): "
            + ("met" if met else "missed")
        )
    return lines


def success_cells(runs: list[dict]) -> str:
    """The first cells of a method's row: reads as target after stage 1 and after stage 2 (train / held-out), and
    iterations-to-edit (median; how many never reached it)."""
    cells = []
    for stage in ("pds", "refinement"):
        stages = [x[stage] for x in runs]
        cells.append(f"{spread([x['train']['attribute_success'] for x in stages], True)} / "
                     f"{spread([x['eval']['attribute_success'] for x in stages], True)}")  # fmt: skip
    right = [x["refinement"]["eval_read_right"] for x in runs if "eval_read_right" in x["refinement"]]
    views = sum(len(x["colours"]) for x in right)
    cells.append(f"{spread([x['attribute_success'] for x in right], True)} of {views}" if right else "n/a")
    reached = [x["iterations_to_edit"] for x in runs if x["iterations_to_edit"] is not None]
    median = f"{int(np.median(reached))}" if reached else "never"
    return " | ".join([*cells, f"{median}; {len(runs) - len(reached)} of {len(runs)}"])


def shape_table(results: list[dict], methods: list[str]) -> tuple[list[str], dict]:
    """The shape edits' table: reads as the target shape, the silhouette's IoU against the target and the source
    shapes' true silhouettes, the colour kept and the background (after stage 2, training views unless named)."""
    lines = ["### Shape edits (mean over edits and seeds; range over edits x seeds)", "",
             "| method | reads as target shape after stage 1 (train / held-out) | after stage 2 (train / held-out) "
             "| after stage 2, held-out views whose source reads right | iterations-to-edit (median; not reached) | silhouette IoU against the target shape / the source "
             "shape after stage 2 | colour kept after stage 2 | background PSNR after stage 1 / 2 (dB) "
             "| iterations run, stage 1 + stage 2 |", "|" + "---|" * 9]  # fmt: skip
    goals = {}
    for method in methods:
        r = [x["runs"][method] for x in results if method in x["runs"]]
        if not r:
            continue
        s1, s2 = [x["pds"] for x in r], [x["refinement"] for x in r]
        lines.append(
            f"| {method} | {success_cells(r)} | "
            f"{spread([x['train']['target_shape_iou'] for x in s2], digits=3)} / "
            f"{spread([x['train']['source_shape_iou'] for x in s2], digits=3)} | "
            f"{spread([x['train']['source_colour_kept'] for x in s2], True)} | "
            f"{spread([x['train']['background_psnr'] for x in s1])} / {spread([x['train']['background_psnr'] for x in s2])} | "
            f"{iterations_run(r)} |"
        )
        goals[method] = {
            "runs": len(r),
            "nearer_target": sum(x["train"]["target_shape_iou"] > x["train"]["source_shape_iou"] for x in s2),
            "target_iou_min": float(min(x["train"]["target_shape_iou"] for x in s2)),
            "colour_kept": float(np.mean([x["train"]["source_colour_kept"] for x in s2])),
            "background_psnr_stage2": float(np.mean([x["train"]["background_psnr"] for x in s2])),
        }  # fmt: skip
    return lines, goals


def colour_table(results: list[dict], methods: list[str]) -> tuple[list[str], dict]:
    """The colour edits' table and the goals' numbers."""
    def runs(method):
        return [r["runs"][method] for r in results if method in r["runs"]]

    lines = ["### Colour edits over the whole matrix (mean over edits and seeds; range over edits x seeds)", "",
             "| method | reads as target after stage 1 (train / held-out) | after stage 2 (train / held-out) "
             "| after stage 2, held-out views whose source reads right | iterations-to-edit (median; not reached) "
             "| object depth change, % of extent | object pixels moved > 5% "
             "| silhouette IoU | background PSNR after stage 1 / 2 (dB) | iterations run, stage 1 + stage 2 |",
             "|" + "---|" * 10]  # fmt: skip
    goals: dict = {}
    for method in methods:
        r = runs(method)
        if not r:
            continue
        s1 = [x["pds"] for x in r]
        s2 = [x["refinement"] for x in r]
        lines.append(
            f"| {method} | {success_cells(r)} | "
            f"{spread([100 * x['train']['depth_error'] for x in s2])} | "
            f"{spread([x['train']['depth_outliers'] for x in s2], True)} | "
            f"{np.mean([x['train']['silhouette_iou'] for x in s2]):.3f} | "
            f"{spread([x['train']['background_psnr'] for x in s1])} / {spread([x['train']['background_psnr'] for x in s2])} | "
            f"{iterations_run(r)} |"
        )
        goals[method] = {
            "success_stage2": float(np.mean([(x["train"]["attribute_success"] + x["eval"]["attribute_success"]) / 2 for x in s2])),
            "stage2_lowered_success": sum(b["train"]["attribute_success"] < a["train"]["attribute_success"] for a, b in zip(s1, s2)),
            "stage2_raised_background": sum(b["train"]["background_psnr"] > a["train"]["background_psnr"] for a, b in zip(s1, s2)),
            "runs": len(r),
            "background_psnr_stage2": float(np.mean([x["train"]["background_psnr"] for x in s2])),
            "depth_error_stage2": float(np.mean([x["train"]["depth_error"] for x in s2])),
            "silhouette_iou_stage2": float(np.mean([x["train"]["silhouette_iou"] for x in s2])),
        }  # fmt: skip
    return lines, goals


def edit_rows(results: list[dict], methods: list[str]) -> list[str]:
    """One row per edit: the prior's own samples, and each method's success and background after stage 2."""
    lines = ["", "### Per edit (after stage 2, training views; mean over seeds, range in brackets)", "",
              "| edit | prior's own samples read as target | " + " | ".join(
                  f"{m}: reads as target / background PSNR" for m in methods) + " |",
              "|" + "---|" * (2 + len(methods))]  # fmt: skip
    by_edit: dict[str, list[dict]] = {}
    for r in results:
        by_edit.setdefault(edit_caption(r["chain"]), []).append(r)
    for edit, group in by_edit.items():
        cells = [edit, spread([g["prior_samples_read_as_target"] for g in group], True)]
        for method in methods:
            s2 = [g["runs"][method]["refinement"]["train"] for g in group if method in g["runs"]]
            cells.append(f"{spread([x['attribute_success'] for x in s2], True)} / {spread([x['background_psnr'] for x in s2])}")
        lines.append("| " + " | ".join(cells) + " |")
    if any(shape_chain(r) for r in results):
        lines += ["", "A shape edit reads as its target where the target shape is drawn: its renders nearer the "
                  "target scene's true image than the source's where the two differ."]  # fmt: skip
    return lines


def source_lines(results: list[dict]) -> list[str]:
    """The source reconstructions against the scenes' own images: the scale of the identity measures."""
    lines = ["", "Identity is measured against the source reconstruction of the same kind (nerfacto for pds, sds "
              "and dds; splatfacto for the -splat runs): object depth change, silhouette IoU (1 = the source's "
              "silhouette) and background PSNR outside the object. For scale, the source reconstructions against "
              "the scenes' own images:"]  # fmt: skip
    for kind in KINDS:
        reference = [r["source_vs_scene"][kind] for r in results if kind in r["source_vs_scene"]]
        if reference:
            lines.append(
                f"{KINDS[kind]['reconstruction']}: background PSNR {np.mean([r['background_psnr'] for r in reference]):.1f} "
                f"dB, silhouette IoU against the true one {np.mean([r['silhouette_iou'] for r in reference]):.3f}, "
                f"object read as its own colour in {spread([r['train_reads_as_source'] for r in reference], True)} of "
                f"training and {spread([r['eval_reads_as_source'] for r in reference], True)} of held-out views."
            )
    return lines


def goal_lines(goals: dict) -> list[str]:
    """The issue's goals, each with the measured number; 'met' or 'missed by'."""
    lines = shape_goal_lines(goals.get("shape", {})) + variant_goal_lines(goals.get("variants", {}))
    goals = {k: v for k, v in goals.items() if k not in ("shape", "variants")}
    if not goals:
        return lines
    if "pds-splat" in goals:
        splat = goals["pds-splat"]
        lines.append(f"- PDS on splats reads as the target after stage 2 in {100 * splat['success_stage2']:.0f}% of "
                     f"views; background PSNR {splat['background_psnr_stage2']:.1f} dB (no goal set)")  # fmt: skip
    if "pds" not in goals:
        return lines or ["goals: PDS was not run on colour edits"]
    pds = goals["pds"]
    lines = lines + [
        f"- PDS reads as the target after stage 2 in {100 * pds['success_stage2']:.0f}% of views (goal >= 90%): "
        + ("met" if pds["success_stage2"] >= SUCCESS else f"missed by {100 * (SUCCESS - pds['success_stage2']):.0f} points"),
        f"- stage 2 lowered PDS's attribute success in {pds['stage2_lowered_success']} of {pds['runs']} runs and raised "
        f"its background PSNR in {pds['stage2_raised_background']} of {pds['runs']} (goal: never lowers, raises)",
        f"- PDS background PSNR after stage 2: {pds['background_psnr_stage2']:.1f} dB (goal >= 25 dB): "
        + ("met" if pds["background_psnr_stage2"] >= 25 else f"missed by {25 - pds['background_psnr_stage2']:.1f} dB"),
    ]
    for other in ("sds", "dds"):
        if other in goals:
            o = goals[other]
            better = [pds["depth_error_stage2"] < o["depth_error_stage2"], pds["silhouette_iou_stage2"] > o["silhouette_iou_stage2"],
                      pds["background_psnr_stage2"] > o["background_psnr_stage2"]]  # fmt: skip
            lines.append(f"- identity, PDS against {other.upper()} (depth change, silhouette IoU, background PSNR): PDS "
                         f"better in {sum(better)} of 3")  # fmt: skip
    return lines


def shape_goal_lines(goals: dict) -> list[str]:
    """Issue 25's shape goal for PDS (nerfacto, then splats): every final silhouette nearer the target shape's true
    one than the source's, with IoU against the target >= SHAPE_IOU_GOAL."""
    lines = []
    for label in ("pds", "pds-splat"):
        if label in goals:
            g = goals[label]
            met = g["nearer_target"] == g["runs"] and g["target_iou_min"] >= SHAPE_IOU_GOAL
            lines.append(f"- shape edits, {label}: the final silhouette is nearer the target shape's than the source's "
                         f"in {g['nearer_target']} of {g['runs']} runs, IoU against the target at least "
                         f"{g['target_iou_min']:.3f} (goal: all, >= {SHAPE_IOU_GOAL}): " + ("met" if met else "missed"))
    return lines


def side_by_side(path: Path, roots: list[Path], methods: list[str]) -> None:
    """One row per edit (seed 0's first held-out view): scene image, a shape edit's answer, source reconstruction,
    then each method after stage 1 and after stage 2; tiles 2x."""
    from PIL import Image, ImageDraw

    rows = []
    for root in roots:
        renders = np.load(root / "renders.npz")
        measures = json.loads((root / "measures.json").read_text())
        names = sorted(measures["train_views"] + measures["eval_views"])
        view = names.index((measures["eval_views"] or names)[0])
        columns = {"scene": renders["scene"][view]}
        if any((r / "target_scene").is_dir() for r in roots):  # shape edits: their answer (white for colour edits)
            columns["answer"] = renders["target"][view] if "target" in renders else np.full_like(columns["scene"], 255)
        columns.update({key: renders[key][view] for key in ("source", "source-splat") if key in renders})
        for method in methods:
            for stage, label in (("pds", "stage 1"), ("refinement", "stage 2")):
                if f"{method}/{stage}" in renders:
                    columns[f"{method} {label}"] = renders[f"{method}/{stage}"][view]
        rows.append((edit_caption(measures["chain"]), columns))
    size = rows[0][1]["scene"].shape[0] * 2
    labels = list(rows[0][1])
    label_width = 150
    grid = Image.new("RGB", (label_width + size * len(labels), 14 + size * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(labels):
        draw.text((label_width + c * size + 3, 2), label, fill="black")
    for r, (edit, columns) in enumerate(rows):
        draw.text((3, 14 + r * size + size // 2 - 5), edit, fill="black")
        for c, label in enumerate(labels):
            tile = Image.fromarray(columns[label]).resize((size, size), Image.NEAREST)
            grid.paste(tile, (label_width + c * size, 14 + r * size))
    grid.save(path)
