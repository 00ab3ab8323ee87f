"""What personalising the prior on a scene buys: the denoising loss and an edit, with and without the LoRA.

    python scripts/personalize_benchmark.py OUT_DIR [--source "red sphere"] [--target "blue sphere"] [--seed 0]

1. `make_scene`: the procedural scene that scripts/fidelity.py makes for this edit and seed.
2. `pds-personalize` on its training views (instance prompt "a sks <colour> <shape>", prior preservation with
   "a <colour> <shape>"), on the toy prior.
3. The prior's denoising loss on the scene's images, base model and LoRA, at the same timesteps and noises
   (pds_nerfstudio.prior.dreambooth.held_denoising_loss): on the views it trained on and on the views it
   did not see, under the instance prompt, the class prompt and the target's prompt.
4. scripts/fidelity.py, PDS on nerfacto through both stages, "a sks <source>" -> "a sks <target>", with the LoRA
   (--pipeline.prior.lora) and without it, from the same scene and seed.

Writes OUT_DIR/personalize.md and personalize.json, and prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from pds_nerfstudio.commands import BIN, command_env, run_command

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder (must be empty or missing)")
    parser.add_argument("--source", default="red sphere")
    parser.add_argument("--target", default="blue sphere")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300, help="pds-personalize steps")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--num-class-images", type=int, default=24)
    parser.add_argument("--fidelity-options", nargs=argparse.REMAINDER, default=[],
                        help="more scripts/fidelity.py options (last on the line)")
    return parser.parse_args(argv)


def run(args: list, log: Path) -> None:
    """Prints and runs a command, its output to `log`; exits on failure."""
    if run_command(args, command_env(), log, echo=False)[1] != 0:
        sys.exit(f"personalize_benchmark: `{Path(str(args[0])).name}` failed; log: {log}")


def losses(scene: Path, lora: Path, prompts: dict[str, str]) -> dict:
    """Denoising loss of the base model and of the LoRA on the training and the unseen views, per prompt."""
    import numpy as np
    import torch
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from pds_nerfstudio.cli.personalize import encode, scene_images
    from pds_nerfstudio.data.dataset import read_image
    from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir
    from pds_nerfstudio.prior.dreambooth import held_denoising_loss
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig

    parser = NerfstudioDataParserConfig(data=scene, downscale_factor=1).setup()
    trained = {Path(p).name for p in parser.get_dataparser_outputs("train").image_filenames}
    unseen = [torch.from_numpy(np.asarray(read_image(path, False), dtype=np.float32) / 255).permute(2, 0, 1)
              for path in sorted((scene / "images").glob("*.png")) if path.name not in trained]  # fmt: skip
    views = {"training views": scene_images(scene), "unseen views": unseen}
    result = {}
    for name, adapter in (("base", None), ("lora", str(lora))):
        prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(embedded_toy_prior_dir()), dtype="fp32",
                                                    device="cpu", lora=adapter))  # fmt: skip
        prior.load()
        latents = {part: encode(prior, images, prior.native_resolution) for part, images in views.items()}
        result[name] = {f"{part}, {label}": held_denoising_loss(prior, latents[part], prompt)
                        for part in views for label, prompt in prompts.items()}  # fmt: skip
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out_dir.absolute()
    if out.exists() and any(out.iterdir()):
        print(f"personalize_benchmark: error: {out} is not empty", file=sys.stderr)
        return 2
    from pds_nerfstudio.synthetic.procedural_scene import make_scene
    from pds_nerfstudio.synthetic.embedded_prior import embedded_toy_prior_dir

    out.mkdir(parents=True, exist_ok=True)
    scene, lora = out / "scene", out / "lora"
    make_scene(scene, size=64, num_views=24, objects=(args.source,), seed=args.seed)
    prompts = {"instance prompt": f"a sks {args.source}", "class prompt": f"a {args.source}",
               "target's prompt": f"a {args.target}"}  # fmt: skip
    run([BIN / "pds-personalize", "--data", scene, "--instance-prompt", prompts["instance prompt"], "--output", lora,
         "--prior.model-id", embedded_toy_prior_dir(), "--steps", args.steps, "--learning-rate", args.learning_rate,
         "--class-prompt", prompts["class prompt"], "--num-class-images", args.num_class_images, "--seed", args.seed],
        out / "personalize.log")  # fmt: skip
    measured = losses(scene, lora, prompts)
    edits = {}
    for name, extra in (("without LoRA", []), ("with LoRA", ["--options", "--pipeline.prior.lora", lora])):
        folder = out / name.replace(" ", "_")
        run([sys.executable, REPO / "scripts" / "fidelity.py", folder, "--edits", f"{args.source}:{args.target}",
             "--seeds", args.seed, "--methods", "pds", "--scene-kinds", "nerfacto", "--prompt-template", "a sks {}",
             "--workers", "1", *args.fidelity_options, *extra], out / f"{folder.name}.log")  # fmt: skip
        chain = json.loads((folder / "fidelity.json").read_text())["chains"][0]
        edits[name] = {stage: chain["runs"]["pds"][stage] for stage in ("pds", "refinement")}
    lines = ["| denoising loss | base model | with the LoRA |", "|---|---:|---:|"]
    for key in measured["base"]:
        lines.append(f"| {key} | {measured['base'][key]:.4f} | {measured['lora'][key]:.4f} |")
    lines += ["", f"| edit 'a sks {args.source}' -> 'a sks {args.target}' (PDS, after stage 1 / stage 2) | reads as "
              "target, training / held-out views | background PSNR (dB) | object depth change, % of extent |",
              "|---|---|---|---|"]  # fmt: skip
    for name, stages in edits.items():
        s1, s2 = stages["pds"], stages["refinement"]
        lines.append(
            f"| {name} | {s1['train']['attribute_success']:.0%} / {s1['eval']['attribute_success']:.0%} after stage 1, "
            f"{s2['train']['attribute_success']:.0%} / {s2['eval']['attribute_success']:.0%} after stage 2 | "
            f"{s1['train']['background_psnr']:.1f} / {s2['train']['background_psnr']:.1f} | "
            f"{100 * s1['train']['depth_error']:.2f} / {100 * s2['train']['depth_error']:.2f} |"
        )
    info = json.loads((lora / "pds_lora.json").read_text())
    lines += ["", f"LoRA: rank {info['rank']}, {info['steps']} steps at {info['learning_rate']:g}, {info['images']} "
              f"training views, prior preservation with {args.num_class_images} images of {prompts['class prompt']!r}; "
              f"scene seed {args.seed}; toy prior."]  # fmt: skip
    text = "\n".join(lines)
    (out / "personalize.md").write_text(text + "\n")
    (out / "personalize.json").write_text(json.dumps({"losses": measured, "edits": edits, "lora": info}, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
