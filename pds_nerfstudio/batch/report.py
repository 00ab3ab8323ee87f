"""The end of a batch: a summary table and JSON, the known-answer measures, and a contact sheet of the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image, ImageDraw

from pds_nerfstudio.batch.plan import Job
from pds_nerfstudio.synthetic.procedural_scene import PALETTE

TILE = 96
"""Side of a contact-sheet tile."""


def known_answer(job: Job, run_dir: Path) -> Optional[Dict[str, Any]]:
    """For a procedural scene (`scene.json`) and a target prompt that names a palette colour: how many training
    views read as that colour after stage 2, and the background PSNR against the run's own reconstruction
    renders (or the scene's images when the run started from a checkpoint). None otherwise."""
    from pds_nerfstudio.measure.fidelity_measures import load_scene_truth, measure_stage_renders

    colours = [word for word in job.target.lower().replace(",", " ").split() if word in PALETTE]
    renders = run_dir / "renders"
    if not (job.scene / "scene.json").is_file() or not colours or not (renders / "refinement").is_dir():
        return None
    truth = load_scene_truth(job.scene)
    reference = renders / "reconstruction" if (renders / "reconstruction").is_dir() else job.scene / "images"
    measured = measure_stage_renders(renders / "refinement", reference, truth)
    reads, seen = measured.reading(colours[-1])
    return {"target_colour": colours[-1], "reads_as_target": reads, "views": seen,
            "background_psnr": measured.background_psnr}  # fmt: skip


def summary(jobs: List[Job], results: Dict[str, Dict[str, Any]]) -> tuple[str, List[Dict[str, Any]]]:
    """A markdown table (one row per job) and the rows as JSON."""
    rows = []
    for job in jobs:
        result = results.get(job.key, {"state": "not run"})
        row = {"edit": job.name, "seed": job.seed, "method": job.method, "scene": str(job.scene),
               "source": job.source, "target": job.target, **result}  # fmt: skip
        if result.get("state") in ("done", "skipped") and result.get("run_dir"):
            row["measures"] = known_answer(job, Path(result["run_dir"]))
        rows.append(row)
    lines = ["| edit | seed | status | minutes | attempts | run folder | measured |", "|---|---:|---|---:|---:|---|---|"]
    for row in rows:
        minutes = f"{row['seconds'] / 60:.1f}" if row.get("seconds") is not None else ""
        measures = row.get("measures")
        measured = (f"{measures['target_colour']} in {measures['reads_as_target']} of {measures['views']} views, "
                    f"background {measures['background_psnr']:.1f} dB") if measures else ""  # fmt: skip
        state = row["state"] if row["state"] != "failed" else f"failed (log: {row.get('log')})"
        lines.append(f"| {row['edit']} | {row['seed']} | {state} | {minutes} | {row.get('attempt', '')} | "
                     f"{row.get('run_dir', '')} | {measured} |")  # fmt: skip
    return "\n".join(lines), rows


def contact_sheet(path: Path, jobs: List[Job], results: Dict[str, Dict[str, Any]], views: int = 3) -> Optional[Path]:
    """One row per finished job: a few training views as the scene shows them, then as the edit renders them."""
    rows = []
    for job in jobs:
        result = results.get(job.key, {})
        renders = Path(result.get("run_dir", "")) / "renders" / "refinement"
        if result.get("state") not in ("done", "skipped") or not renders.is_dir():
            continue
        edited = sorted(renders.glob("*.png"))
        picks = [edited[i] for i in np.linspace(0, len(edited) - 1, min(views, len(edited))).round().astype(int)]
        images = job.scene / "images"
        sources = [next(iter(sorted(images.glob(f"{p.stem}.*"))), None) for p in picks]
        rows.append((f"{job.name} seed {job.seed}", [s for s in sources if s is not None], picks))
    if not rows:
        return None
    columns = max(len(sources) + len(picks) for _, sources, picks in rows)
    sheet = Image.new("RGB", (160 + columns * TILE, 16 + len(rows) * TILE), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((164, 2), "scene views | edited views", fill="black")
    for r, (label, sources, picks) in enumerate(rows):
        draw.text((4, 16 + r * TILE + TILE // 2 - 6), label[:24], fill="black")
        for c, image_path in enumerate([*sources, *picks]):
            with Image.open(image_path) as image:
                sheet.paste(image.convert("RGB").resize((TILE, TILE)), (160 + c * TILE, 16 + r * TILE))
    sheet.save(path)
    return path


def write(output: Path, jobs: List[Job], results: Dict[str, Dict[str, Any]]) -> tuple[str, Path, Optional[Path]]:
    """Writes batch_summary.md and .json and contact_sheet.png into `output`; returns the table and the paths."""
    table, rows = summary(jobs, results)
    output.mkdir(parents=True, exist_ok=True)
    (output / "batch_summary.md").write_text(table + "\n")
    (output / "batch_summary.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return table, output / "batch_summary.json", contact_sheet(output / "contact_sheet.png", jobs, results)
