"""Edit fidelity of PDS against SDS and DDS, on a procedural scene whose right answer is known.

    python scripts/fidelity.py OUT_DIR [--source "red sphere"] [--target "blue sphere"] [--prior DIR]
                               [--methods pds sds dds] [--clip-model DIR] [--seed N] ...

1. `make_scene`: a one-object procedural scene with masks, depth and scene.json (the known answer).
2. `ns-train pds-nerfacto`: one reconstruction, the source scene of every edit.
3. `ns-train pds --load-dir <reconstruction> --pipeline.method M` for each method, at equal budgets (the same
   iterations, guidance, prior, seed and options); prompts "a <colour> <shape>".
4. Every view of the scene is rendered from each result (colour and depth) and measured
   (pds_nerfstudio/fidelity.py says how): attribute success, depth error relative to the scene extent,
   background PSNR and silhouette IoU against the source reconstruction, and CLIP directional similarity
   when --clip-model names a CLIP folder.

Prints a table, writes OUT_DIR/fidelity.md, OUT_DIR/fidelity.json and OUT_DIR/side_by_side.png
(rows: views; columns: scene image, source reconstruction, one per method). The prior defaults to the toy
prior embedded in the package (pds_nerfstudio/assets/toy_prior), which knows 12 colours x 3 shapes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
METHODS = ("pds", "sds", "dds")
GOALS = "PDS: attribute success >= 90%, median depth error < 5% of the extent, background PSNR >= 25 dB"


@dataclass
class Measures:
    """One row of the table: one scene (the source reconstruction, or an edit) over every view."""

    name: str
    attribute_success: float
    """Fraction of views whose object reads as the target colour."""
    source_colour_kept: float
    """Fraction of views whose object still reads as the source colour."""
    depth_error: float
    """Median |depth - depth of the source reconstruction| / extent (mean over views)."""
    depth_outliers: float
    """Fraction of pixels whose depth moved by more than 5% of the extent (mean over views)."""
    background_psnr: float
    silhouette_iou: float
    clip_directional: float | None = None
    colours: list[str] = field(default_factory=list)
    """The colour each view reads as ("" where the object is hidden)."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing)")
    parser.add_argument("--source", default="red sphere", help='"<colour> <shape>" of the scene\'s object')
    parser.add_argument("--target", default="blue sphere", help='"<colour> <shape>": the same shape, another colour')
    parser.add_argument("--prior", type=Path, default=None, help="Stable Diffusion folder (default: the toy prior)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--size", type=int, default=64, help="image side of the scene")
    parser.add_argument("--num-views", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="seed of the scene layout and of every run")
    parser.add_argument("--reconstruction-iterations", type=int, default=1000)
    parser.add_argument("--edit-iterations", type=int, default=200, help="stage-1 iterations of every method")
    parser.add_argument("--refinement-iterations", type=int, default=0,
                        help="stage-2 iterations (0: measure the stage-1 edit; stage 2 replaces one view every 10 "
                             "iterations, and views it has not reached yet still show the source)")
    parser.add_argument("--guidance-scale", type=float, default=30.0, help="the same for every method")
    parser.add_argument("--sdedit-guidance-scale", type=float, default=7.5)
    parser.add_argument("--render-scale", type=float, default=0.5, help="stage-1 render scale (see ns-train pds)")
    parser.add_argument("--clip-model", type=Path, default=None, help="CLIP folder for directional similarity")
    parser.add_argument("--views-in-image", type=int, default=4, help="rows of side_by_side.png")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--measure-only", action="store_true",
                        help="measure the runs already in OUT_DIR (of an earlier call with the same options) again")
    return parser.parse_args(argv)


def check_edit(source: str, target: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """Parse both objects; only colour edits are measured (attribute success reads the object's colour)."""
    from pds_nerfstudio.fixtures.procedural_scene import parse_object

    (source_colour, shape), (target_colour, target_shape) = parse_object(source), parse_object(target)
    if target_shape != shape or target_colour == source_colour:
        raise ValueError(
            f"--target {target!r} must be the source's shape ({shape}) in another colour: fidelity measures colour edits"
        )
    return (source_colour, shape), (target_colour, shape)


def shown(args: Sequence[str]) -> str:
    head = "python" if args[0] == sys.executable else Path(args[0]).name
    return shlex.join([head, *map(str, args[1:])])


def run(args: list[str], dry_run: bool, log: Path | None = None) -> float:
    """Print and run a command (its output to ``log`` when given); exit with its output's tail on failure."""
    print(f"$ {shown(args)}", flush=True)
    if dry_run:
        return 0.0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    with open(log, "w") if log else open(os.devnull, "w") as sink:
        code = subprocess.call([str(a) for a in args], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_text().splitlines()[-20:] if log else []
        sys.exit("\n".join([*tail, f"fidelity: `{Path(str(args[0])).name}` failed (exit {code}); log: {log}"]))
    return time.monotonic() - start


def reconstruction_command(args: argparse.Namespace, scene: Path, runs: Path) -> list:
    from pds_nerfstudio.fixtures.small_nerfacto import CPU_NERFACTO_OPTIONS, NO_EVALUATION_OPTIONS

    return [BIN / "ns-train", "pds-nerfacto", "--data", scene, "--output-dir", runs, "--timestamp", "source",
            "--max-num-iterations", args.reconstruction_iterations,
            "--steps-per-save", args.reconstruction_iterations, "--machine.seed", args.seed,
            "--vis", "tensorboard", *NO_EVALUATION_OPTIONS, *CPU_NERFACTO_OPTIONS]  # fmt: skip


def edit_command(args, method: str, prompts: tuple[str, str], prior: Path, scene: Path, runs: Path) -> list:
    from pds_nerfstudio.fixtures.small_nerfacto import CPU_NERFACTO_OPTIONS, NO_EVALUATION_OPTIONS

    source_models = runs / scene.name / "pds-nerfacto" / "source" / "nerfstudio_models"
    total = args.reconstruction_iterations + args.edit_iterations + args.refinement_iterations
    return [BIN / "ns-train", "pds", "--data", scene, "--output-dir", runs, "--timestamp", method,
            "--load-dir", source_models, "--machine.seed", args.seed,
            "--pipeline.method", method,
            "--pipeline.source-prompt", prompts[0], "--pipeline.target-prompt", prompts[1],
            "--pipeline.prior.model-id", prior, "--pipeline.prior.dtype", "fp32",
            "--pipeline.guidance-scale", args.guidance_scale,
            "--pipeline.sdedit-guidance-scale", args.sdedit_guidance_scale,
            "--pipeline.reconstruction-iterations", args.reconstruction_iterations,
            "--pipeline.pds-iterations", args.edit_iterations,
            "--pipeline.refinement-iterations", args.refinement_iterations,
            "--pipeline.render-scale", args.render_scale, "--pipeline.seed", args.seed,
            "--pipeline.log-every", max(1, args.edit_iterations // 4),
            "--steps-per-save", total, "--vis", "tensorboard",
            *NO_EVALUATION_OPTIONS, *CPU_NERFACTO_OPTIONS]  # fmt: skip


def render_views(config: Path, scene: Path) -> tuple[np.ndarray, np.ndarray]:
    """Colour (V, H, W, 3) in [0, 1] and ray depth in world units (V, H, W) of every view in transforms.json."""
    import torch
    from nerfstudio.cameras.cameras import Cameras, CameraType
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config, test_mode="inference")
    transform = json.loads((config.parent / "dataparser_transforms.json").read_text())
    meta = json.loads((scene / "transforms.json").read_text())
    world = torch.tensor(np.stack([frame["transform_matrix"] for frame in meta["frames"]]), dtype=torch.float32)
    to_ns = torch.tensor(transform["transform"], dtype=torch.float32)
    poses = to_ns @ world  # nerfstudio's dataparser: orient and centre, then scale the positions
    poses[:, :3, 3] *= transform["scale"]
    cameras = Cameras(
        camera_to_worlds=poses, fx=meta["fl_x"], fy=meta["fl_y"], cx=meta["cx"], cy=meta["cy"],
        width=meta["w"], height=meta["h"], camera_type=CameraType.PERSPECTIVE,
    ).to(pipeline.device)  # fmt: skip
    colours, depths = [], []
    with torch.no_grad():
        for view in range(len(cameras)):
            outputs = pipeline.model.get_outputs_for_camera(cameras[view : view + 1])
            colours.append(outputs["rgb"].clamp(0, 1).cpu().numpy())
            depths.append(outputs["depth"][..., 0].cpu().numpy() / transform["scale"])
    return np.stack(colours), np.stack(depths)


def load_scene(scene: Path):
    """Ground truth of every view: images, object masks, ray depth, rays, and the scene geometry."""
    from PIL import Image

    from pds_nerfstudio.fidelity import SceneGeometry, pixel_rays, z_to_ray_depth

    meta = json.loads((scene / "transforms.json").read_text())
    info = json.loads((scene / "scene.json").read_text())
    objects = info["objects"]
    centre = np.mean([o["centre"] for o in objects], axis=0)
    radius = max(np.linalg.norm(np.asarray(o["centre"]) - centre) + o["size"] * math.sqrt(3) for o in objects) * 1.05
    geometry = SceneGeometry(extent=float(info["extent"]), content_centre=centre, content_radius=float(radius))
    views = []
    for frame in meta["frames"]:
        name = Path(frame["file_path"]).stem
        pose = np.asarray(frame["transform_matrix"])
        origin, dirs = pixel_rays(pose, meta["fl_x"], meta["cx"], meta["cy"], meta["w"], meta["h"])
        depth = z_to_ray_depth(np.load(scene / "depth" / f"{name}.npy"), dirs, pose)
        image = np.asarray(Image.open(scene / "images" / f"{name}.png").convert("RGB"), dtype=np.float64) / 255
        mask = np.asarray(Image.open(scene / "masks" / f"{name}.png")) > 0
        views.append({"name": name, "origin": origin, "dirs": dirs, "depth": depth, "image": image, "mask": mask})
    return views, geometry, objects[0]


def measure(name, colours, depths, source, views, geometry, albedo, source_colour, target_colour) -> Measures:
    """The measures of one scene's renders against the source reconstruction's (see pds_nerfstudio/fidelity.py)."""
    from pds_nerfstudio import fidelity as fm

    read, errors, outliers, psnrs, ious = [], [], [], [], []
    for i, view in enumerate(views):
        estimate = fm.estimated_albedo(colours[i], view["image"], albedo, fm.erode(view["mask"]))
        read.append("" if estimate is None else fm.nearest_colour(estimate))
        valid = fm.erode(view["mask"])  # see pds_nerfstudio/fidelity.py: the ground has no reliable NeRF depth
        error, outlier = fm.depth_error(depths[i], source[1][i], valid, geometry.extent)
        errors.append(error)
        outliers.append(outlier)
        psnrs.append(fm.psnr(colours[i], source[0][i], ~view["mask"]))
        background = fm.background_distance(view["origin"], view["dirs"], geometry)
        reference = fm.silhouette(view["depth"], background, geometry.extent)
        ious.append(fm.iou(fm.silhouette(depths[i], background, geometry.extent), reference))
    seen = [c for c in read if c]
    finite = [p for p in psnrs if math.isfinite(p)]
    return Measures(
        name=name,
        attribute_success=sum(c == target_colour for c in seen) / max(1, len(seen)),
        source_colour_kept=sum(c == source_colour for c in seen) / max(1, len(seen)),
        depth_error=float(np.mean(errors)),
        depth_outliers=float(np.mean(outliers)),
        background_psnr=float(np.mean(finite)) if finite else math.inf,
        silhouette_iou=float(np.mean(ious)),
        colours=read,
    )


def table(rows: list[Measures], reference: Measures, prompts: tuple[str, str]) -> str:
    clip = any(r.clip_directional is not None for r in rows)
    head = ["scene", "reads as target colour", "keeps source colour", "object depth error (median, % of extent)",
            "object pixels whose depth moved > 5% of extent",
            "background PSNR (dB)", "silhouette IoU"] + (["CLIP directional similarity"] if clip else [])  # fmt: skip
    lines = [f"Edit {prompts[0]!r} -> {prompts[1]!r}; identity measured against the source reconstruction.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in rows:
        cells = [r.name, f"{r.attribute_success:.0%}", f"{r.source_colour_kept:.0%}", f"{100 * r.depth_error:.2f}",
                 f"{r.depth_outliers:.1%}",
                 f"{r.background_psnr:.1f}", f"{r.silhouette_iou:.3f}"]  # fmt: skip
        if clip:
            cells.append("" if r.clip_directional is None else f"{r.clip_directional:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Reference: the source reconstruction against the scene's own images has background PSNR "
              f"{reference.background_psnr:.1f} dB and silhouette IoU {reference.silhouette_iou:.3f}."]  # fmt: skip
    return "\n".join(lines)


def goals(rows: list[Measures]) -> str:
    pds = next((r for r in rows if r.name == "pds"), None)
    if pds is None:
        return "goals: PDS was not run"
    met = pds.attribute_success >= 0.9 and pds.depth_error < 0.05 and pds.background_psnr >= 25
    return f"goals ({GOALS}): {'met' if met else 'NOT met'}"


def side_by_side(path: Path, views, columns: dict[str, np.ndarray], rows: int) -> None:
    """A grid: one row per view (evenly spaced), one labelled column per scene, each tile upscaled 2x."""
    from PIL import Image, ImageDraw

    picks = np.linspace(0, len(views) - 1, num=min(rows, len(views))).round().astype(int)
    tiles = {"scene image": np.stack([v["image"] for v in views]), **columns}
    size = views[0]["image"].shape[0] * 2
    grid = Image.new("RGB", (size * len(tiles), 14 + size * len(picks)), "white")
    draw = ImageDraw.Draw(grid)
    for c, (label, images) in enumerate(tiles.items()):
        draw.text((c * size + 3, 2), label, fill="black")
        for r, view in enumerate(picks):
            tile = Image.fromarray(np.round(np.clip(images[view], 0, 1) * 255).astype(np.uint8))
            grid.paste(tile.resize((size, size), Image.NEAREST), (c * size, 14 + r * size))
    grid.save(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from pds_nerfstudio.fixtures.procedural_scene import PALETTE, make_scene
    from pds_nerfstudio.fixtures.toy_prior import caption, embedded_toy_prior_dir

    try:
        (source_colour, shape), (target_colour, _) = check_edit(args.source, args.target)
        prior = (args.prior or embedded_toy_prior_dir()).absolute()
        if not (prior / "model_index.json").is_file():
            raise ValueError(f"--prior {args.prior} is not a Stable Diffusion folder (no model_index.json)")
        if args.clip_model is not None and not (args.clip_model / "config.json").is_file():
            raise ValueError(f"--clip-model {args.clip_model} is not a CLIP folder (no config.json)")
        out = args.out_dir.absolute()
        if args.measure_only and not (out / "runs").is_dir():
            raise FileNotFoundError(f"--measure-only: {out} holds no runs of an earlier call")
        if not args.measure_only and out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty: give a new folder (results are never overwritten)")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"fidelity: error: {err}", file=sys.stderr)
        return 2
    prompts = (caption(source_colour, shape), caption(target_colour, shape))
    scene, runs, logs = out / "scene", out / "runs", out / "logs"
    started = time.monotonic()
    print(f"fidelity: {prompts[0]!r} -> {prompts[1]!r}, prior {prior}, methods {', '.join(args.methods)}")
    if not args.measure_only:
        if not args.dry_run:
            logs.mkdir(parents=True)
            make_scene(scene, size=args.size, num_views=args.num_views, objects=(args.source,), seed=args.seed)
        run(reconstruction_command(args, scene, runs), args.dry_run, logs / "reconstruction.log")
        for method in args.methods:
            run(edit_command(args, method, prompts, prior, scene, runs), args.dry_run, logs / f"{method}.log")
    if args.dry_run:
        return 0

    views, geometry, obj = load_scene(scene)
    albedo = tuple(obj["rgb"])
    source = render_views(runs / scene.name / "pds-nerfacto" / "source" / "config.yml", scene)
    gt = (np.stack([v["image"] for v in views]), np.stack([v["depth"] for v in views]))
    reference = measure("source vs images", *source, gt, views, geometry, albedo, source_colour, target_colour)
    rows = [measure("source", *source, source, views, geometry, albedo, source_colour, target_colour)]
    renders = {"source": source[0]}
    for method in args.methods:
        colours, depths = render_views(runs / scene.name / "pds" / method / "config.yml", scene)
        rows.append(measure(method, colours, depths, source, views, geometry, albedo, source_colour, target_colour))
        renders[method] = colours
    if args.clip_model is not None:
        from pds_nerfstudio.fidelity import clip_directional_similarity

        for row in rows:
            row.clip_directional = clip_directional_similarity(
                args.clip_model, source[0], renders[row.name], prompts[0], prompts[1]
            )
    side_by_side(out / "side_by_side.png", views, renders, args.views_in_image)
    report = table(rows, reference, prompts)
    verdict = goals(rows)
    settings = (f"Settings: {args.num_views} views of {args.size}x{args.size}, seed {args.seed}; reconstruction "
                f"{args.reconstruction_iterations} iterations; every method {args.edit_iterations} stage-1 + "
                f"{args.refinement_iterations} stage-2 iterations, guidance {args.guidance_scale:g}, SDEdit guidance "
                f"{args.sdedit_guidance_scale:g}, render scale {args.render_scale:g}; prior {prior.name}.")  # fmt: skip
    (out / "fidelity.md").write_text(f"{report}\n\n{settings}\n\n{verdict}\n")
    (out / "fidelity.json").write_text(json.dumps(
        {"prompts": prompts, "settings": vars(args) | {"prior": str(prior)}, "reference": reference.__dict__,
         "rows": [r.__dict__ for r in rows], "palette": PALETTE}, indent=2, default=str) + "\n")  # fmt: skip
    print(f"\n{report}\n\n{settings}\n{verdict}")
    print(f"\nwrote {out / 'fidelity.md'}, {out / 'fidelity.json'}, {out / 'side_by_side.png'} "
          f"in {(time.monotonic() - started) / 60:.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
