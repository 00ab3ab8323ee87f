"""Measuring one chain's runs (in a process of its own): every view of every run rendered from its stage-end
checkpoints, measured against the source reconstruction of its kind (:mod:`fidelity_measures`); iterations-to-edit
from stage 1's log panels; and how often the prior's own samples of the target read as its colour."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from pds_nerfstudio.measure.fidelity_chain import EDIT_WINDOW_VIEWS, KINDS, SAMPLE_VIEWS, STAGES, SUCCESS, Chain, run_kind


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
    from pds_nerfstudio.measure import fidelity_measures as fm

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
    from pds_nerfstudio.measure import fidelity_measures as fm

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

    from pds_nerfstudio.measure import fidelity_measures as fm
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

    from pds_nerfstudio.measure import fidelity_measures as fm
    from pds_nerfstudio.synthetic.toy_prior import caption
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
    from pds_nerfstudio.measure import fidelity_measures as fm

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
        run_dir, caps = chain.run(label), settings["stage_ends"][kind]
        config = yaml_config(run_dir / "config.yml")
        ends, iterations = run_stage_ends(run_dir, caps, config["pds_iterations"])
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
            run_dir, truth, target, config["change_view_every"], caps["pds"] - config["pds_iterations"] + 1
        )
        measured["iterations"] = iterations
        result["runs"][label] = measured
    (root / "measures.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez_compressed(root / "renders.npz", **{k: np.round(v * 255).astype(np.uint8) for k, v in renders.items()})
    return result


def run_stage_ends(run_dir: Path, caps: dict[str, int], pds_cap: int) -> tuple[dict[str, int], dict[str, int]]:
    """(last step, iterations) of stages 1 and 2 of a run: where they ended (run_dir/stage_ends.json, written by
    every edit), else at their caps `caps` (the last steps of stage 1 and 2 at the options' lengths)."""
    path = run_dir / "stage_ends.json"
    if path.is_file():
        ended = json.loads(path.read_text())
        return ({stage: ended[stage]["last_step"] for stage in STAGES},
                {stage: ended[stage]["iterations"] for stage in STAGES})  # fmt: skip
    return dict(caps), {"pds": pds_cap, "refinement": caps["refinement"] - caps["pds"]}


def prompts_of(chain: Chain, template: str) -> tuple[str, str]:
    return template.format(chain.source), template.format(chain.target)


def yaml_config(path: Path) -> dict:
    """The few pipeline options of a run that the measures need, read from its config.yml."""
    import yaml

    config = yaml.load(path.read_text(), Loader=yaml.Loader)
    return {"change_view_every": config.pipeline.change_view_every, "pds_iterations": config.pipeline.pds_iterations}
