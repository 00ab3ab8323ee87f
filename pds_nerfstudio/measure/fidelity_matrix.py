"""Edit fidelity of PDS against SDS and DDS over a matrix of colour and shape edits whose right answer is known.

    python scripts/fidelity.py OUT_DIR                    # 11 edits x 2 seeds x (pds, sds, dds, pds-splat): about 4 h on 2 cores
    python scripts/fidelity.py OUT_DIR --matrix quick     # 2 colour edits x 1 seed: about 25 min on 2 cores
    python scripts/fidelity.py OUT_DIR --matrix shape     # the 3 shape edits x 2 seeds
    python scripts/fidelity.py OUT_DIR --edits "red sphere:blue sphere" --seeds 0 1 --methods pds
    python scripts/fidelity.py OUT_DIR --scene-kinds splat  # PDS on Gaussian splats only (`ns-train pds-splat`)
    python scripts/fidelity.py OUT_DIR --options --pipeline.scene.pds-proposal-losses True   # an option, everywhere
    python scripts/fidelity.py OUT_DIR --variant "region=--pipeline.edit-region auto"   # PDS with and without it
    python scripts/fidelity.py OUT_DIR --extend --variant "..."   # more runs on an earlier call's chains

For every edit and seed (a "chain", run in parallel with --workers):
1. `make_scene`: a one-object procedural scene (layout from the seed) with masks, depth and scene.json; for a
   shape edit also its answer, the same layout with the target shape (`target_scene/`).
2. `ns-train pds-nerfacto`: the source reconstruction (the same training as stage 0 of `ns-train pds`); and
   `ns-train pds-splatfacto` for the splats.
3. `ns-train pds --load-dir <reconstruction> --pipeline.method M` for each method at equal budgets (the same
   stage lengths, guidance, prior, seed and options): stage 1, then stage 2, as a user runs them; a checkpoint
   is kept at the end of each stage. Beside them `ns-train pds-splat` (PDS on the splats; its own stage
   lengths: splatfacto's per-parameter learning rates need more stage-1 steps than a hash grid). Each
   `--variant NAME=OPTIONS` runs PDS once more from the same reconstruction with those options added (run
   "pds+NAME", "pds-splat+NAME"), so that an option is measured against the matrix's runs on the same chains.
4. Measures (pds_nerfstudio/measure/fidelity_measures.py), after stage 1 and after stage 2, on the training views and on the
   held-out (eval) views: the fraction of views whose object reads as the target colour; identity against the
   source reconstruction (object depth change, silhouette IoU, background PSNR); iterations-to-edit from
   stage 1's own renders; and how often the prior's own samples of the target caption, drawn into the
   scene's views, read as the target colour (pds_nerfstudio/guidance/prior_samples.py). A shape edit is
   measured against its answer: the silhouette's IoU against the target shape's true silhouette and against the
   source shape's, the colour kept (read on the target shape), and the background outside both shapes; the
   prior's own samples say which of the two silhouettes they are nearer.

Writes OUT_DIR/fidelity.md, fidelity.json and side_by_side.png; prints the tables. The prior defaults to the
toy prior embedded in the package, which knows 12 colours x 3 shapes.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from pds_nerfstudio.commands import BIN, command_env, log_tail, run_command, shown
from pds_nerfstudio.measure.fidelity_chain import (
    COLOUR_MATRIX,
    KINDS,
    METHODS,
    QUICK_MATRIX,
    SHAPE_MATRIX,
    Chain,
    run_kind,
    run_variant,
    stage_ends,
)
from pds_nerfstudio.measure.fidelity_report import goal_lines, report, side_by_side
from pds_nerfstudio.measure.fidelity_runs import measure_chain

MEASURE_CHAIN = [sys.executable, "-m", "pds_nerfstudio.measure.fidelity_matrix"]
"""This module as a command: a chain is measured in a process of its own (`<MEASURE_CHAIN> ROOT --measure-chain`)."""


def run_labels(args: argparse.Namespace) -> list[str]:
    """The runs of every chain: each method on nerfacto, each splat method on splats (as asked), then each variant of
    PDS on the scene kinds it names."""
    labels = list(args.methods) if "nerfacto" in args.scene_kinds else []
    labels += [f"{m}-splat" for m in args.splat_methods] if "splat" in args.scene_kinds else []
    for name, by_kind in variants(args).items():
        labels += [f"pds{KINDS[kind]['suffix']}+{name}" for kind in KINDS if kind in by_kind and kind in args.scene_kinds]
    return labels


def variants(args: argparse.Namespace) -> dict[str, dict[str, list[str]]]:
    """`--variant NAME[@KIND]=OPTIONS` as {name: {scene kind: ns-train options}}: one name may be given once per
    scene kind, with options of that kind (e.g. a splat learning rate).

    Raises:
        ValueError: a variant is not written NAME[@KIND]=OPTIONS, names an unknown kind, or is named twice for a kind.
    """
    found: dict[str, dict[str, list[str]]] = {}
    for text in args.variant:
        match = re.fullmatch(r"([a-z0-9][a-z0-9-]*)(?:@([a-z]+))?=(.+)", text.strip(), re.DOTALL)
        if match is None:
            raise ValueError(f"--variant {text!r}: write NAME=OPTIONS or NAME@KIND=OPTIONS (NAME in lower-case letters, "
                             "digits and '-'), e.g. 'region=--pipeline.edit-region auto'")  # fmt: skip
        name, kind, options = match.groups()
        if kind is not None and kind not in KINDS:
            raise ValueError(f"--variant {text!r}: unknown scene kind {kind!r} (one of {', '.join(KINDS)})")
        kinds = (kind,) if kind else tuple(KINDS)
        if any(k in found.get(name, {}) for k in kinds):
            raise ValueError(f"--variant {name!r} is given twice for the same scene kind")
        found.setdefault(name, {}).update({k: shlex.split(options) for k in kinds})
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing)")
    parser.add_argument("--matrix", choices=tuple(MATRICES), default="full",
                        help="the edits to run: colour and shape edits (full), one of the two, or 2 colour edits (quick)")
    parser.add_argument("--edits", nargs="+", default=None,
                        help='"<colour> <shape>:<colour> <shape>" pairs that change the colour or the shape, '
                             'instead of --matrix')
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 (0 with --matrix quick or --edits)")
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
    parser.add_argument("--reconstruction-iterations", type=int, default=2000,
                        help="nerfacto source reconstruction (600 until 2026-12-07: hazy, held-out views misread and "
                             "the white cube's region fused from wrong depths; docs/fidelity.md)")
    parser.add_argument("--pds-iterations", type=int, default=200, help="stage-1 iterations of every method")
    parser.add_argument("--refinement-iterations", type=int, default=210,
                        help="stage-2 iterations of every method (210: every training view SDEdited once)")
    parser.add_argument("--guidance-scale", type=float, default=7.5,
                        help="the same for every method (the toy prior: 7.5 edits cleanly in 2D, 30 oversaturates)")
    parser.add_argument("--sdedit-guidance-scale", type=float, default=7.5)
    parser.add_argument("--render-scale", type=float, default=0.5, help="stage-1 render scale (see ns-train pds)")
    parser.add_argument("--prompt-template", default="a {}",
                        help='the edit\'s prompts, {} standing for "<colour> <shape>" (e.g. "a sks {}" with a LoRA)')
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[@KIND]=OPTIONS",
                        help='PDS once more with these `ns-train` options added, as run "pds+NAME" (and '
                             '"pds-splat+NAME"), from the same reconstruction: e.g. "region=--pipeline.edit-region '
                             'auto"; NAME@nerfacto or NAME@splat runs it on that scene kind only; repeatable')
    parser.add_argument("--extend", action="store_true",
                        help="OUT_DIR holds an earlier call's chains: run only the runs they lack (their scenes and "
                             "reconstructions are kept), then measure the new runs (the others keep their measures "
                             "where the same measures wrote them)")
    parser.add_argument("--options", nargs=argparse.REMAINDER, default=[],
                        help="more `ns-train pds` options for every edit (last on the line)")
    parser.add_argument("--workers", type=int, default=2, help="chains run at once (one torch thread each)")
    parser.add_argument("--clip-model", type=Path, default=None, help="CLIP folder: adds directional similarity")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("--measure-only", action="store_true", help="measure the runs already in OUT_DIR again, all")
    parser.add_argument("--measure-chain", action="store_true", help=argparse.SUPPRESS)  # internal: one chain
    parser.add_argument("--measure-all", action="store_true", help=argparse.SUPPRESS)  # internal: reuse no measure
    return parser.parse_args(argv)


MATRICES = {"full": COLOUR_MATRIX + SHAPE_MATRIX, "colour": COLOUR_MATRIX, "shape": SHAPE_MATRIX, "quick": QUICK_MATRIX}
"""The edits of each --matrix."""


def edit_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The (source, target) objects to edit; refuses pairs that change both the colour and the shape, or neither."""
    from pds_nerfstudio.synthetic.procedural_scene import parse_object

    pairs = []
    for text in args.edits or MATRICES[args.matrix]:
        if ":" not in text:
            raise ValueError(f"--edits {text!r}: write SOURCE:TARGET, e.g. 'red sphere:blue sphere'")
        source, target = (part.strip() for part in text.split(":", 1))
        (source_colour, shape), (target_colour, target_shape) = parse_object(source), parse_object(target)
        if (target_shape != shape) == (target_colour != source_colour):
            raise ValueError(f"--edits {text!r}: the target must be the source's shape ({shape}) in another colour, "
                             f"or another shape in its colour ({source_colour})")  # fmt: skip
        pairs.append((f"{source_colour} {shape}", f"{target_colour} {target_shape}"))
    return pairs


def chains(args: argparse.Namespace, out: Path) -> list[Chain]:
    seeds = args.seeds if args.seeds is not None else ([0] if args.matrix == "quick" or args.edits else [0, 1])
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
    from pds_nerfstudio.synthetic.small_nerfacto import CPU_NERFACTO_OPTIONS, CPU_SPLATFACTO_OPTIONS, NO_EVALUATION_OPTIONS

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
    from pds_nerfstudio.synthetic.small_nerfacto import edit_schedule_options

    kind, method = run_kind(label)
    reconstruction, pds, refinement = lengths(args, kind)
    prompts = [args.prompt_template.format(chain.source), args.prompt_template.format(chain.target)]
    schedule = edit_schedule_options(pds) if kind == "nerfacto" else []  # the splats' rates have no warm-up
    extra = variants(args)[run_variant(label)][kind] if run_variant(label) else []
    return [BIN / "ns-train", KINDS[kind]["edit"], "--timestamp", chain.run(label).name,
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
            *common_options(args, chain, kind), *args.options, *extra, *dataparser_options(args)]  # fmt: skip


def finished(run_dir: Path) -> bool:
    """Whether an edit's run ended its stage 2 (its stage_ends.json says so)."""
    path = run_dir / "stage_ends.json"
    return path.is_file() and "refinement" in json.loads(path.read_text())


def run_chain(args: argparse.Namespace, chain: Chain, prior: Path) -> None:
    """Scene, reconstructions, one edit per run, then the chain's measures (in a process of their own). With
    --extend, the chain's scene and reconstructions are kept and only the runs it lacks are made."""
    from pds_nerfstudio.synthetic.procedural_scene import make_scene

    logs = chain.root / "logs"
    labels = run_labels(args)
    kinds = [kind for kind in KINDS if any(run_kind(label)[0] == kind for label in labels)]
    earlier = json.loads((chain.root / "chain.json").read_text()) if args.extend else None
    if earlier is not None:
        unfinished = [label for label in labels if chain.run(label).exists() and not finished(chain.run(label))]
        if unfinished:
            raise RuntimeError(f"--extend: {chain.root} has unfinished runs ({', '.join(unfinished)}): remove their "
                               f"folders under {chain.runs / 'scene'} to run them again")  # fmt: skip
        labels = [label for label in labels if not finished(chain.run(label))]
    if not args.dry_run:
        if earlier is None:
            chain.root.mkdir(parents=True)
            make_scene(chain.scene, size=args.size, num_views=args.num_views, objects=(chain.source,), seed=chain.seed)
            if chain.is_shape_edit:  # the same layout (the seed draws sizes, yaws and cameras alike for every shape)
                make_scene(chain.target_scene, size=args.size, num_views=args.num_views, objects=(chain.target,),
                           seed=chain.seed)  # fmt: skip
        settings = {"source": chain.source, "target": chain.target, "seed": chain.seed, "prior": str(prior),
                    "runs": labels, "stage_ends": {kind: stage_ends(*lengths(args, kind)) for kind in kinds},
                    "clip_model": args.clip_model, "prompt_template": args.prompt_template}  # fmt: skip
        if earlier is not None:  # the earlier runs stay measured beside the new ones
            settings["runs"] = [*earlier["runs"], *(label for label in labels if label not in earlier["runs"])]
            settings["stage_ends"] = {**earlier["stage_ends"], **settings["stage_ends"]}
        (chain.root / "chain.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
    for kind in kinds:
        if earlier is None or not (chain.reconstruction(kind) / "config.yml").is_file():
            run(reconstruction_command(args, chain, kind), logs / f"reconstruction{KINDS[kind]['suffix']}.log",
                args.dry_run)  # fmt: skip
    for label in labels:
        run(edit_command(args, chain, label, prior), logs / f"{label}.log", args.dry_run)
    measure_command = [*MEASURE_CHAIN, chain.root, "--measure-chain"]
    run(measure_command, logs / "measure.log", args.dry_run)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_chain:
        measure_chain(args.out_dir, reuse=not args.measure_all)
        return 0
    from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir

    try:
        todo = chains(args, args.out_dir.absolute())
        prior = (args.prior or embedded_toy_prior_dir()).absolute()
        if not (prior / "model_index.json").is_file():
            raise ValueError(f"--prior {args.prior} is not a Stable Diffusion folder (no model_index.json)")
        if args.clip_model is not None and not (args.clip_model / "config.json").is_file():
            raise ValueError(f"--clip-model {args.clip_model} is not a CLIP folder (no config.json)")
        out = args.out_dir.absolute()
        variants(args)  # refused here, before anything runs
        if args.measure_only and args.extend:
            raise ValueError("--measure-only and --extend: give one (--extend measures its new runs, --measure-only every run)")
        for flag, given in (("--measure-only", args.measure_only), ("--extend", args.extend)):
            if given and not all((c.root / "chain.json").is_file() for c in todo):
                raise FileNotFoundError(f"{flag}: {out} does not hold the runs of an earlier call with these edits")
        if not (args.measure_only or args.extend) and out.exists() and any(out.iterdir()):
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
            run([*MEASURE_CHAIN, chain.root, "--measure-chain", "--measure-all"], chain.root / "logs" / "measure.log",
                False)  # fmt: skip
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
    labels = [label for label in results[0]["chain"]["runs"] if all(label in r["chain"]["runs"] for r in results)]
    settings = (f"Settings: scenes of {args.num_views} views of {args.size}x{args.size} ({args.train_split_fraction:g} "
                f"for training); reconstruction {args.reconstruction_iterations} iterations; every method "
                f"{args.pds_iterations} stage-1 + {args.refinement_iterations} stage-2 iterations, guidance "
                f"{args.guidance_scale:g}, SDEdit guidance {args.sdedit_guidance_scale:g}, render scale "
                f"{args.render_scale:g}; splats: reconstruction {args.splat_reconstruction_iterations}, stage 1 "
                f"{args.splat_pds_iterations}, stage 2 {args.refinement_iterations} iterations; prior {prior.name}; "
                f"extra options: {shlex.join(args.options) or 'none'}"
                + "".join(f"; variant {v}" for v in args.variant) + ".")  # fmt: skip
    tables, goals = report(results, labels, settings)
    verdict = "\n".join(goal_lines(goals))
    side_by_side(out / "side_by_side.png", [c.root for c in todo if c.seed == todo[0].seed], labels)
    (out / "fidelity.md").write_text(f"{tables}\n\nGoals:\n{verdict}\n")
    (out / "fidelity.json").write_text(json.dumps(
        {"settings": vars(args) | {"prior": str(prior)}, "goals": goals, "chains": results}, indent=2, default=str) + "\n")
    print(f"\n{tables}\n\nGoals:\n{verdict}")
    print(f"\nwrote {out / 'fidelity.md'}, {out / 'fidelity.json'}, {out / 'side_by_side.png'} "
          f"in {(time.monotonic() - started) / 60:.1f} min")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
