"""Edit fidelity of PDS against SDS and DDS over a matrix of colour edits whose right answer is known.

    python scripts/fidelity.py OUT_DIR                    # 8 edits x 2 seeds x (pds, sds, dds, pds-splat): about 3 h on 2 cores
    python scripts/fidelity.py OUT_DIR --matrix quick     # 2 edits x 1 seed: about 25 min on 2 cores
    python scripts/fidelity.py OUT_DIR --edits "red sphere:blue sphere" --seeds 0 1 --methods pds
    python scripts/fidelity.py OUT_DIR --scene-kinds splat  # PDS on Gaussian splats only (`ns-train pds-splat`)
    python scripts/fidelity.py OUT_DIR --options --pipeline.scene.pds-proposal-losses True   # measure an option

For every edit and seed (a "chain", run in parallel with --workers):
1. `make_scene`: a one-object procedural scene (layout from the seed) with masks, depth and scene.json.
2. `ns-train pds-nerfacto`: the source reconstruction (the same training as stage 0 of `ns-train pds`); and
   `ns-train pds-splatfacto` for the splats.
3. `ns-train pds --load-dir <reconstruction> --pipeline.method M` for each method at equal budgets (the same
   stage lengths, guidance, prior, seed and options): stage 1, then stage 2, as a user runs them; a checkpoint
   is kept at the end of each stage. Beside them `ns-train pds-splat` (PDS on the splats; its own stage
   lengths: splatfacto's per-parameter learning rates need more stage-1 steps than a hash grid).
4. Measures (pds_nerfstudio/fidelity.py), after stage 1 and after stage 2, on the training views and on the
   held-out (eval) views: the fraction of views whose object reads as the target colour; identity against the
   source reconstruction (object depth change, silhouette IoU, background PSNR); iterations-to-edit from
   stage 1's own renders; and how often the prior's own samples of the target caption, drawn into the
   scene's views, read as the target colour (pds_nerfstudio/prior_samples.py).

Writes OUT_DIR/fidelity.md, fidelity.json and side_by_side.png; prints the tables. The prior defaults to the
toy prior embedded in the package, which knows 12 colours x 3 shapes.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pds_nerfstudio.commands import BIN, command_env, log_tail, run_command, shown

REPO = Path(__file__).resolve().parents[1]
METHODS = ("pds", "sds", "dds")
STAGES = ("pds", "refinement")
"""The measured results: the end of stage 1 and the end of stage 2."""
FULL_MATRIX = (
    "red sphere:blue sphere",
    "green cube:purple cube",
    "blue cylinder:orange cylinder",
    "yellow sphere:green sphere",
    "white cube:red cube",
    "orange cylinder:black cylinder",
    "purple sphere:white sphere",
    "cyan cube:gray cube",
)
"""Chromatic and achromatic sources and targets, on spheres, cubes and cylinders."""
QUICK_MATRIX = ("red sphere:blue sphere", "cyan cube:gray cube")
SUCCESS = 0.9
"""Attribute success that counts as edited (iterations-to-edit; the goal)."""
EDIT_WINDOW_VIEWS = 5
"""Iterations-to-edit reads the renders of the last this many stage-1 views."""
SAMPLE_VIEWS = 8
"""Views of each scene into which the prior samples the target caption."""


@dataclass(frozen=True)
class Chain:
    """One edit of one scene (layout and runs seeded by `seed`): a reconstruction and one run per method."""

    source: str
    target: str
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.source.replace(' ', '-')}_to_{self.target.split()[0]}"

    @property
    def scene(self) -> Path:
        return self.root / "scene"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def reconstruction(self, kind: str = "nerfacto") -> Path:
        return self.runs / "scene" / KINDS[kind]["reconstruction"] / "source"

    def run(self, label: str) -> Path:
        kind, method = run_kind(label)
        return self.runs / "scene" / KINDS[kind]["edit"] / method


KINDS = {
    "nerfacto": {"reconstruction": "pds-nerfacto", "edit": "pds", "suffix": ""},
    "splat": {"reconstruction": "pds-splatfacto", "edit": "pds-splat", "suffix": "-splat"},
}
"""The scene representations: their reconstruction and edit methods, and the suffix of their runs' labels."""


def run_kind(label: str) -> tuple[str, str]:
    """(scene kind, method) of a run label: "pds" is PDS on nerfacto, "pds-splat" PDS on splats."""
    return ("splat", label[: -len("-splat")]) if label.endswith("-splat") else ("nerfacto", label)


def run_labels(args: argparse.Namespace) -> list[str]:
    """The runs of every chain: each method on nerfacto, each splat method on splats (as asked)."""
    labels = list(args.methods) if "nerfacto" in args.scene_kinds else []
    return labels + ([f"{m}-splat" for m in args.splat_methods] if "splat" in args.scene_kinds else [])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing)")
    parser.add_argument("--matrix", choices=("full", "quick"), default="full", help="the edits and seeds to run")
    parser.add_argument("--edits", nargs="+", default=None,
                        help='"<colour> <shape>:<colour> <shape>" pairs (same shape), instead of --matrix')
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 (full), 0 (quick)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods on nerfacto")
    parser.add_argument("--scene-kinds", nargs="+", choices=tuple(KINDS), default=list(KINDS),
                        help="nerfacto (`ns-train pds`), splat (`ns-train pds-splat`)")
    parser.add_argument("--splat-methods", nargs="+", choices=METHODS, default=["pds"], help="methods on splats")
    parser.add_argument("--splat-reconstruction-iterations", type=int, default=700)
    parser.add_argument("--splat-pds-iterations", type=int, default=600,
                        help="stage-1 iterations on splats (the authors' splat learning rates are 4 to 200 times "
                             "below nerfacto's 1e-2: 200 steps barely start the edit)")
    parser.add_argument("--prior", type=Path, default=None, help="Stable Diffusion folder (default: the toy prior)")
    parser.add_argument("--size", type=int, default=64, help="image side of the scenes")
    parser.add_argument("--num-views", type=int, default=24)
    parser.add_argument("--train-split-fraction", type=float, default=0.875, help="nerfstudio's: 24 views -> 3 held out")
    parser.add_argument("--reconstruction-iterations", type=int, default=600)
    parser.add_argument("--pds-iterations", type=int, default=200, help="stage-1 iterations of every method")
    parser.add_argument("--refinement-iterations", type=int, default=210,
                        help="stage-2 iterations of every method (210: every training view SDEdited once)")
    parser.add_argument("--guidance-scale", type=float, default=7.5,
                        help="the same for every method (the toy prior: 7.5 edits cleanly in 2D, 30 oversaturates)")
    parser.add_argument("--sdedit-guidance-scale", type=float, default=7.5)
    parser.add_argument("--render-scale", type=float, default=0.5, help="stage-1 render scale (see ns-train pds)")
    parser.add_argument("--prompt-template", default="a {}",
                        help='the edit\'s prompts, {} standing for "<colour> <shape>" (e.g. "a sks {}" with a LoRA)')
    parser.add_argument("--options", nargs=argparse.REMAINDER, default=[],
                        help="more `ns-train pds` options for every edit (last on the line)")
    parser.add_argument("--workers", type=int, default=2, help="chains run at once (one torch thread each)")
    parser.add_argument("--clip-model", type=Path, default=None, help="CLIP folder: adds directional similarity")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--measure-only", action="store_true", help="measure the runs already in OUT_DIR again")
    parser.add_argument("--measure-chain", action="store_true", help=argparse.SUPPRESS)  # internal: one chain
    return parser.parse_args(argv)


def edit_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (source, target) objects to edit; refuses pairs that are not colour edits of one shape."""
    from pds_nerfstudio.fixtures.procedural_scene import parse_object

    pairs = []
    for text in args.edits or (FULL_MATRIX if args.matrix == "full" else QUICK_MATRIX):
        if ":" not in text:
            raise ValueError(f"--edits {text!r}: write SOURCE:TARGET, e.g. 'red sphere:blue sphere'")
        source, target = (part.strip() for part in text.split(":", 1))
        (source_colour, shape), (target_colour, target_shape) = parse_object(source), parse_object(target)
        if target_shape != shape or target_colour == source_colour:
            raise ValueError(f"--edits {text!r}: the target must be the source's shape ({shape}) in another colour")
        pairs.append((f"{source_colour} {shape}", f"{target_colour} {shape}"))
    return pairs


def chains(args: argparse.Namespace, out: Path) -> list[Chain]:
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.matrix == "full" and not args.edits else [0])
    result = []
    for source, target in edit_pairs(args):
        for seed in seeds:
            chain = Chain(source, target, seed, Path())
            result.append(Chain(source, target, seed, out / chain.name / f"seed{seed}"))
    return result


# ------------------------------------------------------------------------------------------------ commands


def run(args: list, log: Path, dry_run: bool) -> None:
    """Prints and runs a command, its output to `log` (one torch thread per command unless OMP_NUM_THREADS is set:
    the chains share the cores); raises with the log's tail when it fails."""
    if dry_run:
        print(f"$ {shown(args)}", flush=True)
        return
    _, code = run_command(args, command_env(), log, echo=False)
    if code != 0:
        raise RuntimeError(f"{log_tail(log)}\n`{Path(str(args[0])).name}` failed (exit {code}); log: {log}")


def common_options(args: argparse.Namespace, chain: Chain, kind: str) -> list:
    from pds_nerfstudio.fixtures.small_nerfacto import CPU_NERFACTO_OPTIONS, CPU_SPLATFACTO_OPTIONS, NO_EVALUATION_OPTIONS

    return ["--data", chain.scene, "--output-dir", chain.runs, "--machine.seed", chain.seed, "--vis", "tensorboard",
            *NO_EVALUATION_OPTIONS, *(CPU_NERFACTO_OPTIONS if kind == "nerfacto" else CPU_SPLATFACTO_OPTIONS)]  # fmt: skip


def dataparser_options(args: argparse.Namespace) -> list:
    """nerfstudio's dataparser is a subcommand: its options come last on the line."""
    return ["nerfstudio-data", "--train-split-fraction", args.train_split_fraction]


def lengths(args: argparse.Namespace, kind: str) -> tuple[int, int, int]:
    """Stage lengths (reconstruction, PDS, refinement) of a scene kind."""
    if kind == "splat":
        return args.splat_reconstruction_iterations, args.splat_pds_iterations, args.refinement_iterations
    return args.reconstruction_iterations, args.pds_iterations, args.refinement_iterations


def reconstruction_command(args: argparse.Namespace, chain: Chain, kind: str = "nerfacto") -> list:
    steps = lengths(args, kind)[0]
    return [BIN / "ns-train", KINDS[kind]["reconstruction"], "--timestamp", "source", "--max-num-iterations", steps,
            "--steps-per-save", steps, *common_options(args, chain, kind), *dataparser_options(args)]  # fmt: skip


def edit_command(args: argparse.Namespace, chain: Chain, label: str, prior: Path) -> list:
    from pds_nerfstudio.fixtures.small_nerfacto import edit_schedule_options

    kind, method = run_kind(label)
    reconstruction, pds, refinement = lengths(args, kind)
    prompts = [args.prompt_template.format(chain.source), args.prompt_template.format(chain.target)]
    schedule = edit_schedule_options(pds) if kind == "nerfacto" else []  # the splats' rates have no warm-up
    return [BIN / "ns-train", KINDS[kind]["edit"], "--timestamp", method,
            "--load-dir", chain.reconstruction(kind) / "nerfstudio_models", "--pipeline.method", method,
            "--pipeline.source-prompt", prompts[0], "--pipeline.target-prompt", prompts[1],
            "--pipeline.prior.model-id", prior, "--pipeline.prior.dtype", "fp32",
            "--pipeline.guidance-scale", args.guidance_scale,
            "--pipeline.sdedit-guidance-scale", args.sdedit_guidance_scale,
            "--pipeline.reconstruction-iterations", reconstruction,
            "--pipeline.pds-iterations", pds, "--pipeline.refinement-iterations", refinement,
            "--pipeline.render-scale", args.render_scale, "--pipeline.seed", chain.seed,
            "--pipeline.change-view-every", 5, "--pipeline.log-every", 2,
            "--steps-per-save", reconstruction + pds + refinement, *schedule,
            *common_options(args, chain, kind), *args.options, *dataparser_options(args)]  # fmt: skip


def run_chain(args: argparse.Namespace, chain: Chain, prior: Path) -> None:
    """Scene, reconstructions, one edit per run, then the chain's measures (in a process of their own)."""
    from pds_nerfstudio.fixtures.procedural_scene import make_scene

    logs = chain.root / "logs"
    labels = run_labels(args)
    kinds = [kind for kind in KINDS if any(run_kind(label)[0] == kind for label in labels)]
    if not args.dry_run:
        chain.root.mkdir(parents=True)
        make_scene(chain.scene, size=args.size, num_views=args.num_views, objects=(chain.source,), seed=chain.seed)
        settings = {"source": chain.source, "target": chain.target, "seed": chain.seed, "prior": str(prior),
                    "runs": labels, "stage_ends": {kind: stage_ends(*lengths(args, kind)) for kind in kinds},
                    "clip_model": args.clip_model, "prompt_template": args.prompt_template}  # fmt: skip
        (chain.root / "chain.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    for kind in kinds:
        run(reconstruction_command(args, chain, kind), logs / f"reconstruction{KINDS[kind]['suffix']}.log", args.dry_run)
    for label in labels:
        run(edit_command(args, chain, label, prior), logs / f"{label}.log", args.dry_run)
    measure_command = [sys.executable, Path(__file__), chain.root, "--measure-chain"]
    run(measure_command, logs / "measure.log", args.dry_run)


def stage_ends(reconstruction: int, pds: int, refinement: int) -> dict[str, int]:
    """Global step of the last iteration of stages 1 and 2 (their checkpoints)."""
    return {"pds": reconstruction + pds - 1, "refinement": reconstruction + pds + refinement - 1}


# ---------------------------------------------------------------------------------------------- measuring


class RunRenderer:
    """Renders every view of a run's scene (training and held-out) from any of its checkpoints; the pipeline is
    built once (nerfstudio's eval_setup) and each checkpoint's state loaded into it."""

    def __init__(self, config: Path) -> None:
        from nerfstudio.utils.eval_utils import eval_setup

        self.config, self.pipeline, _, _ = eval_setup(config, test_mode="test")
        self.scale = json.loads((config.parent / "dataparser_transforms.json").read_text())["scale"]
        manager = self.pipeline.datamanager
        self.parts = [manager.train_dataset, manager.eval_dataset]
        self.train_names, self.eval_names = ([Path(f).stem for f in part.image_filenames] for part in self.parts)

    def render(self, step: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Colour (V, H, W, 3) and ray depth in world units (V, H, W) of every view in name order, from the
        checkpoint of `step` (None: the one eval_setup loaded, the latest)."""
        import torch

        if step is not None:
            path = self.config.get_checkpoint_dir() / f"step-{step:09d}.ckpt"
            state = torch.load(path, map_location="cpu")
            self.pipeline.load_pipeline(state["pipeline"], state["step"])
        colours, depths = {}, {}
        with torch.no_grad():
            for part, names in zip(self.parts, (self.train_names, self.eval_names)):
                cameras = part.cameras.to(self.pipeline.device)
                for index, name in enumerate(names):
                    outputs = self.pipeline.model.get_outputs_for_camera(cameras[index : index + 1])
                    colours[name] = outputs["rgb"].clamp(0, 1).cpu().numpy()
                    depths[name] = outputs["depth"][..., 0].cpu().numpy() / self.scale
        order = sorted(colours)
        return np.stack([colours[n] for n in order]), np.stack([depths[n] for n in order])


def view_measures(truth, colours: np.ndarray, depths: np.ndarray, source: tuple[np.ndarray, np.ndarray]) -> dict:
    """Per-view measures of one scene's renders (views in `truth` order) against the source reconstruction's."""
    from pds_nerfstudio import fidelity as fm

    out: dict[str, list] = {"colour": [], "depth_error": [], "depth_outliers": [], "background_psnr": [], "iou": []}
    for i, view in enumerate(truth.views):
        out["colour"].append(fm.read_colour(colours[i], view, truth.albedo))
        error, outliers = fm.depth_error(depths[i], source[1][i], fm.erode(view.mask), truth.geometry.extent)
        out["depth_error"].append(error)
        out["depth_outliers"].append(outliers)
        out["background_psnr"].append(fm.psnr(colours[i], source[0][i], ~view.mask))
        background = fm.background_distance(view.origin, view.dirs, truth.geometry)
        reference = fm.silhouette(source[1][i], background, truth.geometry.extent)  # the source's own silhouette
        out["iou"].append(fm.iou(fm.silhouette(depths[i], background, truth.geometry.extent), reference))
    return out


def summarise(per_view: dict, names: list[str], all_names: list[str], target: str, source_colour: str) -> dict:
    """Means over the views in `names` (a subset of `all_names`, the order of `per_view`)."""
    from pds_nerfstudio import fidelity as fm

    index = [all_names.index(n) for n in names]
    colours = [per_view["colour"][i] for i in index]
    psnrs = [per_view["background_psnr"][i] for i in index if math.isfinite(per_view["background_psnr"][i])]
    return {
        "attribute_success": fm.fraction_reading(colours, target),
        "source_colour_kept": fm.fraction_reading(colours, source_colour),
        "depth_error": float(np.mean([per_view["depth_error"][i] for i in index])),
        "depth_outliers": float(np.mean([per_view["depth_outliers"][i] for i in index])),
        "background_psnr": float(np.mean(psnrs)) if psnrs else math.inf,
        "silhouette_iou": float(np.mean([per_view["iou"][i] for i in index])),
        "colours": colours,
    }


def iterations_to_edit(run_dir: Path, truth, target: str, change_view_every: int, first_step: int) -> int | None:
    """The first stage-1 iteration (counted from 1) after which the object reads as the target colour in at least
    90% of stage 1's own renders (its log panels) of its last EDIT_WINDOW_VIEWS views; None when that never happens."""
    from PIL import Image

    from pds_nerfstudio import fidelity as fm
    from pds_nerfstudio.edit.log_panel import read_panels

    reads = []
    for panel in read_panels(run_dir):
        view = truth.view(panel.image_name)
        height, width = panel.render.shape[:2]
        mask = np.asarray(Image.fromarray(view.mask).resize((width, height), Image.NEAREST))
        small = fm.SceneView(view.name, panel.source, mask, view.depth, view.origin, view.dirs)
        reads.append((panel.step, fm.read_colour(panel.render, small, truth.albedo)))
    window = EDIT_WINDOW_VIEWS * change_view_every
    for position, (step, _) in enumerate(reads):
        recent = [colour for s, colour in reads[: position + 1] if s > step - window]
        if step - first_step + 1 >= min(window, len(reads)) and fm.fraction_reading(recent, target) >= SUCCESS:
            return step - first_step + 1
    return None


def prior_sample_success(prior_dir: Path, truth, target: str, seed: int, guidance_scale: float = 7.5) -> float:
    """Fraction of SAMPLE_VIEWS views into which the prior's own samples of the target caption read as its colour."""
    import torch

    from pds_nerfstudio import fidelity as fm
    from pds_nerfstudio.fixtures.toy_prior import caption
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
    from pds_nerfstudio.guidance.prior_samples import blended_samples

    prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(prior_dir), dtype="fp32", device="cpu"))
    picks = np.linspace(0, len(truth.views) - 1, SAMPLE_VIEWS).round().astype(int)
    views = [truth.views[i] for i in picks]
    images = torch.from_numpy(np.stack([v.image for v in views])).permute(0, 3, 1, 2).float()
    masks = torch.from_numpy(np.stack([v.mask for v in views]))
    with torch.no_grad():
        latents = blended_samples(
            prior.encode(images), masks, prior.eps_fn(guidance_scale), prior.alphas_cumprod,
            prior.text_embeddings([caption(*target.split())] * len(views)),
            generator=torch.Generator().manual_seed(seed), steps_offset=prior.ddim_settings["steps_offset"],
        )  # fmt: skip
        samples = prior.decode(latents).permute(0, 2, 3, 1).double().numpy()
    return fm.fraction_reading([fm.read_colour(s, v, truth.albedo) for s, v in zip(samples, views)], target.split()[0])


def measure_chain(root: Path) -> dict:
    """Measures one chain's runs; writes root/measures.json and root/renders.npz (for the side-by-side). Every run
    is measured against the source reconstruction of its own scene kind."""
    from pds_nerfstudio import fidelity as fm

    settings = json.loads((root / "chain.json").read_text())
    if "runs" not in settings:  # a chain written before splats were measured: nerfacto methods only
        settings["runs"], settings["stage_ends"] = settings["methods"], {"nerfacto": settings["stage_ends"]}
    chain = Chain(settings["source"], settings["target"], settings["seed"], root)
    truth = fm.load_scene_truth(chain.scene)
    target, source_colour = chain.target.split()[0], chain.source.split()[0]
    names = [v.name for v in truth.views]
    truth_images = np.stack([v.image for v in truth.views])
    truth_depths = np.stack([v.depth for v in truth.views])
    result = {"chain": settings, "runs": {}, "source_vs_scene": {},
              "prior_samples_read_as_target": prior_sample_success(Path(settings["prior"]), truth, chain.target, chain.seed)}
    renders = {"scene": truth_images}
    sources = {}
    for kind in settings["stage_ends"]:
        renderer = RunRenderer(chain.reconstruction(kind) / "config.yml")
        colours, depths = renderer.render()
        train, held_out = renderer.train_names, renderer.eval_names
        assert sorted(train + held_out) == names, "the scene's views and the runs' differ"
        result["train_views"], result["eval_views"] = train, held_out
        sources[kind] = (colours, depths)
        against_truth = view_measures(truth, colours, depths, (truth_images, truth_depths))  # the source, measured
        result["source_vs_scene"][kind] = {
            "background_psnr": float(np.mean(against_truth["background_psnr"])),
            "silhouette_iou": float(np.mean(against_truth["iou"])),
            **{f"{part}_reads_as_source": fm.fraction_reading(
                [against_truth["colour"][names.index(n)] for n in part_names], source_colour)
               for part, part_names in (("train", train), ("eval", held_out))},
        }  # fmt: skip
        renders[f"source{KINDS[kind]['suffix']}"] = colours
    train, held_out = result["train_views"], result["eval_views"]
    for label in settings["runs"]:
        kind = run_kind(label)[0]
        run_dir, ends = chain.run(label), settings["stage_ends"][kind]
        config = yaml_config(run_dir / "config.yml")
        renderer = RunRenderer(run_dir / "config.yml")
        measured = {}
        for stage in STAGES:
            stage_colours, stage_depths = renderer.render(ends[stage])
            per_view = view_measures(truth, stage_colours, stage_depths, sources[kind])
            measured[stage] = {part: summarise(per_view, part_names, names, target, source_colour)
                               for part, part_names in (("train", train), ("eval", held_out))}  # fmt: skip
            renders[f"{label}/{stage}"] = stage_colours
            if settings.get("clip_model"):
                measured[stage]["clip_directional"] = fm.clip_directional_similarity(
                    settings["clip_model"], sources[kind][0], stage_colours,
                    *prompts_of(chain, settings.get("prompt_template", "a {}"))
                )
        measured["iterations_to_edit"] = iterations_to_edit(
            run_dir, truth, target, config["change_view_every"], ends["pds"] - config["pds_iterations"] + 1
        )
        result["runs"][label] = measured
    (root / "measures.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez_compressed(root / "renders.npz", **{k: np.round(v * 255).astype(np.uint8) for k, v in renders.items()})
    return result


def prompts_of(chain: Chain, template: str) -> tuple[str, str]:
    return template.format(chain.source), template.format(chain.target)


def yaml_config(path: Path) -> dict:
    """The few pipeline options of a run that the measures need, read from its config.yml."""
    import yaml

    config = yaml.load(path.read_text(), Loader=yaml.Loader)
    return {"change_view_every": config.pipeline.change_view_every, "pds_iterations": config.pipeline.pds_iterations}


# ------------------------------------------------------------------------------------------------ reporting


def edit_caption(chain: dict) -> str:
    """'red sphere -> blue' for a chain's settings (its measures.json "chain")."""
    return f"{chain['source']} -> {chain['target'].split()[0]}"


def spread(values: list[float], percent: bool = False) -> str:
    """Mean, and the range over seeds when there is more than one value."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    show = (lambda v: f"{100 * v:.0f}%") if percent else (lambda v: f"{v:.1f}")
    text = show(float(np.mean(finite)))
    return text if len(finite) == 1 else f"{text} ({show(min(finite))}-{show(max(finite))})"


def report(results: list[dict], methods: list[str], args_text: str) -> tuple[str, dict]:
    """The tables (markdown) and the goals' numbers."""
    def runs(method):
        return [r["runs"][method] for r in results if method in r["runs"]]

    lines = ["### Over the whole matrix (mean over edits and seeds; range over edits x seeds)", "",
             "| method | reads as target after stage 1 (train / held-out) | after stage 2 (train / held-out) "
             "| iterations-to-edit (median; not reached) | object depth change, % of extent | object pixels moved > 5% "
             "| silhouette IoU | background PSNR after stage 1 / 2 (dB) |", "|" + "---|" * 8]  # fmt: skip
    goals: dict = {}
    for method in methods:
        r = runs(method)
        if not r:
            continue
        s1 = [x["pds"] for x in r]
        s2 = [x["refinement"] for x in r]
        reached = [x["iterations_to_edit"] for x in r if x["iterations_to_edit"] is not None]
        median = f"{int(np.median(reached))}" if reached else "never"
        lines.append(
            f"| {method} | {spread([x['train']['attribute_success'] for x in s1], True)} / "
            f"{spread([x['eval']['attribute_success'] for x in s1], True)} | "
            f"{spread([x['train']['attribute_success'] for x in s2], True)} / "
            f"{spread([x['eval']['attribute_success'] for x in s2], True)} | {median}; {len(r) - len(reached)} of {len(r)} | "
            f"{spread([100 * x['train']['depth_error'] for x in s2])} | "
            f"{spread([x['train']['depth_outliers'] for x in s2], True)} | "
            f"{np.mean([x['train']['silhouette_iou'] for x in s2]):.3f} | "
            f"{spread([x['train']['background_psnr'] for x in s1])} / {spread([x['train']['background_psnr'] for x in s2])} |"
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
    lines += ["", "### Per edit (after stage 2, training views; mean over seeds, range in brackets)", "",
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
    lines += ["", "Identity is measured against the source reconstruction of the same kind (nerfacto for pds, sds "
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
    return "\n".join([*lines, "", args_text]), goals


def goal_lines(goals: dict) -> list[str]:
    """The issue's goals, each with the measured number; 'met' or 'missed by'."""
    lines = []
    if "pds-splat" in goals:
        splat = goals["pds-splat"]
        lines.append(f"- PDS on splats reads as the target after stage 2 in {100 * splat['success_stage2']:.0f}% of "
                     f"views; background PSNR {splat['background_psnr_stage2']:.1f} dB (no goal set)")  # fmt: skip
    if "pds" not in goals:
        return lines or ["goals: PDS was not run"]
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


def side_by_side(path: Path, roots: list[Path], methods: list[str]) -> None:
    """One row per edit (seed 0's first held-out view): scene image, source reconstruction, then each method
    after stage 1 and after stage 2; tiles 2x."""
    from PIL import Image, ImageDraw

    rows = []
    for root in roots:
        renders = np.load(root / "renders.npz")
        measures = json.loads((root / "measures.json").read_text())
        names = sorted(measures["train_views"] + measures["eval_views"])
        view = names.index((measures["eval_views"] or names)[0])
        columns = {"scene": renders["scene"][view]}
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_chain:
        measure_chain(args.out_dir)
        return 0
    from pds_nerfstudio.fixtures.embedded_prior import embedded_toy_prior_dir

    try:
        todo = chains(args, args.out_dir.absolute())
        prior = (args.prior or embedded_toy_prior_dir()).absolute()
        if not (prior / "model_index.json").is_file():
            raise ValueError(f"--prior {args.prior} is not a Stable Diffusion folder (no model_index.json)")
        if args.clip_model is not None and not (args.clip_model / "config.json").is_file():
            raise ValueError(f"--clip-model {args.clip_model} is not a CLIP folder (no config.json)")
        out = args.out_dir.absolute()
        if args.measure_only and not all((c.root / "chain.json").is_file() for c in todo):
            raise FileNotFoundError(f"--measure-only: {out} does not hold the runs of an earlier call with these edits")
        if not args.measure_only and out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty: give a new folder (results are never overwritten)")
        if args.workers < 1:
            raise ValueError("--workers must be >= 1")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"fidelity: error: {err}", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"fidelity: {len(todo)} chains (edits x seeds), runs {', '.join(run_labels(args))}, prior {prior}")
    if args.dry_run:
        for chain in todo:
            run_chain(args, chain, prior)
        return 0

    def work(chain: Chain) -> None:
        if args.measure_only:
            run([sys.executable, Path(__file__), chain.root, "--measure-chain"], chain.root / "logs" / "measure.log", False)
        else:
            run_chain(args, chain, prior)
        print(f"fidelity: {chain.name} seed {chain.seed} done ({(time.monotonic() - started) / 60:.1f} min)", flush=True)

    try:
        with ThreadPoolExecutor(max_workers=args.workers) as pool:
            list(pool.map(work, todo))
    except RuntimeError as err:
        print(f"fidelity: error: {err}", file=sys.stderr)
        return 1
    results = [json.loads((c.root / "measures.json").read_text()) for c in todo]
    settings = (f"Settings: scenes of {args.num_views} views of {args.size}x{args.size} ({args.train_split_fraction:g} "
                f"for training); reconstruction {args.reconstruction_iterations} iterations; every method "
                f"{args.pds_iterations} stage-1 + {args.refinement_iterations} stage-2 iterations, guidance "
                f"{args.guidance_scale:g}, SDEdit guidance {args.sdedit_guidance_scale:g}, render scale "
                f"{args.render_scale:g}; splats: reconstruction {args.splat_reconstruction_iterations}, stage 1 "
                f"{args.splat_pds_iterations}, stage 2 {args.refinement_iterations} iterations; prior {prior.name}; "
                f"extra options: {shlex.join(args.options) or 'none'}.")  # fmt: skip
    tables, goals = report(results, run_labels(args), settings)
    verdict = "\n".join(goal_lines(goals))
    side_by_side(out / "side_by_side.png", [c.root for c in todo if c.seed == todo[0].seed], run_labels(args))
    (out / "fidelity.md").write_text(f"{tables}\n\nGoals:\n{verdict}\n")
    (out / "fidelity.json").write_text(json.dumps(
        {"settings": vars(args) | {"prior": str(prior)}, "goals": goals, "chains": results}, indent=2, default=str) + "\n")
    print(f"\n{tables}\n\nGoals:\n{verdict}")
    print(f"\nwrote {out / 'fidelity.md'}, {out / 'fidelity.json'}, {out / 'side_by_side.png'} "
          f"in {(time.monotonic() - started) / 60:.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
