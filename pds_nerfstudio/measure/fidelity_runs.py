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
                model = self.pipeline.model  # its own outputs: an edit region's viewer output is not measured
                own_outputs = getattr(model, "own_outputs_for_camera", model.get_outputs_for_camera)
                for index, name in enumerate(names):
                    outputs = own_outputs(cameras[index : index + 1])
                    colours[name] = outputs["rgb"].clamp(0, 1).cpu().numpy()
                    depths[name] = outputs["depth"][..., 0].cpu().numpy() / self.scale
        order = sorted(colours)
        return np.stack([colours[n] for n in order]), np.stack([depths[n] for n in order])


def view_measures(truth, colours: np.ndarray, depths: np.ndarray, source: tuple[np.ndarray, np.ndarray],
                  target_truth=None) -> dict:  # fmt: skip
    """Per-view measures of one scene's renders (views in `truth` order) against the source reconstruction's.

    A shape edit's `target_truth` (its answer, the target scene) adds each view's silhouette IoU against the target
    shape's true silhouette and against the source shape's, and how far it reads as the target shape; its colour is
    then read on the target shape, and its background is outside both shapes."""
    from pds_nerfstudio.measure import fidelity_measures as fm

    out: dict[str, list] = {"colour": [], "depth_error": [], "depth_outliers": [], "background_psnr": [], "iou": []}
    if target_truth is not None:
        out |= {"target_shape_iou": [], "source_shape_iou": [], "shape": []}
    for i, view in enumerate(truth.views):
        answer = view if target_truth is None else target_truth.views[i]
        out["colour"].append(fm.read_colour(colours[i], answer, truth.albedo))
        error, outliers = fm.depth_error(depths[i], source[1][i], fm.erode(view.mask), truth.geometry.extent)
        out["depth_error"].append(error)
        out["depth_outliers"].append(outliers)
        out["background_psnr"].append(fm.psnr(colours[i], source[0][i], ~(view.mask | answer.mask)))
        background = fm.background_distance(view.origin, view.dirs, truth.geometry)
        outline = fm.silhouette(depths[i], background, truth.geometry.extent)
        reference = fm.silhouette(source[1][i], background, truth.geometry.extent)  # the source's own silhouette
        out["iou"].append(fm.iou(outline, reference))
        if target_truth is not None:
            for key, shape_view in (("target_shape_iou", answer), ("source_shape_iou", view)):
                out[key].append(fm.iou(outline, fm.silhouette(shape_view.depth, background, truth.geometry.extent)))
            out["shape"].append(fm.target_shape_fraction(colours[i], view.image, answer.image))
    return out


def reads_as_target_shape(fractions: list[float | None]) -> float:
    """Fraction of the views (where the shapes differ) that read as the target shape."""
    seen = [f for f in fractions if f is not None]
    return sum(f >= 0.5 for f in seen) / len(seen) if seen else 0.0


def summarise(per_view: dict, names: list[str], all_names: list[str], target: str, source_colour: str) -> dict:
    """Means over the views in `names` (a subset of `all_names`, the order of `per_view`). The attribute of a shape
    edit (its per-view measures hold "shape") is its shape; "source_colour_kept" is then the colour kept."""
    from pds_nerfstudio.measure import fidelity_measures as fm

    index = [all_names.index(n) for n in names]
    colours = [per_view["colour"][i] for i in index]
    psnrs = [per_view["background_psnr"][i] for i in index if math.isfinite(per_view["background_psnr"][i])]
    summary = {
        "attribute_success": fm.fraction_reading(colours, target),
        "source_colour_kept": fm.fraction_reading(colours, source_colour),
        "depth_error": float(np.mean([per_view["depth_error"][i] for i in index])),
        "depth_outliers": float(np.mean([per_view["depth_outliers"][i] for i in index])),
        "background_psnr": float(np.mean(psnrs)) if psnrs else math.inf,
        "silhouette_iou": float(np.mean([per_view["iou"][i] for i in index])),
        "colours": colours,
    }
    if "shape" in per_view:
        summary["attribute_success"] = reads_as_target_shape([per_view["shape"][i] for i in index])
        for key in ("target_shape_iou", "source_shape_iou"):
            summary[key] = float(np.mean([per_view[key][i] for i in index]))
    return summary


def iterations_to_edit(run_dir: Path, truth, target: str, change_view_every: int, first_step: int,
                       target_truth=None) -> int | None:  # fmt: skip
    """The first stage-1 iteration (counted from 1) after which the object reads as the target colour (a shape edit,
    `target_truth` given: as the target shape) in at least 90% of stage 1's own renders (its log panels) of its last
    EDIT_WINDOW_VIEWS views; None when that never happens."""
    from PIL import Image

    from pds_nerfstudio.measure import fidelity_measures as fm
    from pds_nerfstudio.edit.log_panel import read_panels

    reads = []
    for panel in read_panels(run_dir):
        view = truth.view(panel.image_name)
        height, width = panel.render.shape[:2]
        if target_truth is None:
            mask = np.asarray(Image.fromarray(view.mask).resize((width, height), Image.NEAREST))
            small = fm.SceneView(view.name, panel.source, mask, view.depth, view.origin, view.dirs)
            reads.append((panel.step, fm.read_colour(panel.render, small, truth.albedo)))
        else:
            answer = resized(target_truth.view(panel.image_name).image, width, height)
            fraction = fm.target_shape_fraction(panel.render, panel.source, answer)
            reads.append((panel.step, "" if fraction is None else "target" if fraction >= 0.5 else "source"))
    target = target if target_truth is None else "target"
    window = EDIT_WINDOW_VIEWS * change_view_every
    for position, (step, _) in enumerate(reads):
        recent = [colour for s, colour in reads[: position + 1] if s > step - window]
        if step - first_step + 1 >= min(window, len(reads)) and fm.fraction_reading(recent, target) >= SUCCESS:
            return step - first_step + 1
    return None


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An image in [0, 1] resized (bilinear), as stage 1 resizes its renders."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    pixels = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(pixels, dtype=np.float64) / 255


def prior_sample_success(prior_dir: Path, truth, target: str, seed: int, guidance_scale: float = 7.5,
                         target_truth=None) -> float:  # fmt: skip
    """Fraction of SAMPLE_VIEWS views into which the prior's own samples of the target caption read as its colour;
    for a shape edit (`target_truth` given) as its shape, sampled inside both shapes' masks."""
    import torch

    from pds_nerfstudio.measure import fidelity_measures as fm
    from pds_nerfstudio.synthetic.toy_prior import caption
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
    from pds_nerfstudio.guidance.prior_samples import blended_samples

    prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(prior_dir), dtype="fp32", device="cpu"))
    picks = np.linspace(0, len(truth.views) - 1, SAMPLE_VIEWS).round().astype(int)
    views = [truth.views[i] for i in picks]
    answers = views if target_truth is None else [target_truth.views[i] for i in picks]
    images = torch.from_numpy(np.stack([v.image for v in views])).permute(0, 3, 1, 2).float()
    masks = torch.from_numpy(np.stack([v.mask | a.mask for v, a in zip(views, answers)]))
    with torch.no_grad():
        latents = blended_samples(
            prior.encode(images), masks, prior.eps_fn(guidance_scale), prior.alphas_cumprod,
            prior.text_embeddings([caption(*target.split())] * len(views)),
            generator=torch.Generator().manual_seed(seed), steps_offset=prior.ddim_settings["steps_offset"],
        )  # fmt: skip
        samples = prior.decode(latents).permute(0, 2, 3, 1).double().numpy()
    if target_truth is not None:
        return reads_as_target_shape([fm.target_shape_fraction(s, v.image, a.image)
                                      for s, v, a in zip(samples, views, answers)])  # fmt: skip
    return fm.fraction_reading([fm.read_colour(s, v, truth.albedo) for s, v in zip(samples, views)], target.split()[0])


def measure_chain(root: Path, reuse: bool = True) -> dict:
    """Measures one chain's runs; writes root/measures.json and root/renders.npz (for the side-by-side). Every run
    is measured against the source reconstruction of its own scene kind. With `reuse`, a run that the chain's
    earlier measures.json holds, written by the same MEASURE_VERSION after the run's last checkpoint, keeps them."""
    from pds_nerfstudio.measure import fidelity_measures as fm

    settings = json.loads((root / "chain.json").read_text())
    if "runs" not in settings:  # a chain written before splats were measured: nerfacto methods only
        settings["runs"], settings["stage_ends"] = settings["methods"], {"nerfacto": settings["stage_ends"]}
    chain = Chain(settings["source"], settings["target"], settings["seed"], root)
    truth = fm.load_scene_truth(chain.scene)
    target_truth = fm.load_scene_truth(chain.target_scene) if chain.is_shape_edit else None
    target, source_colour = chain.target.split()[0], chain.source.split()[0]
    names = [v.name for v in truth.views]
    truth_images = np.stack([v.image for v in truth.views])
    truth_depths = np.stack([v.depth for v in truth.views])
    earlier, earlier_renders = earlier_measures(root) if reuse else (None, {})
    samples = (earlier["prior_samples_read_as_target"] if earlier else
               prior_sample_success(Path(settings["prior"]), truth, chain.target, chain.seed, target_truth=target_truth))
    result = {"measure_version": MEASURE_VERSION, "chain": settings, "runs": {}, "source_vs_scene": {},
              "prior_samples_read_as_target": samples}  # fmt: skip
    renders = {"scene": truth_images}
    if target_truth is not None:
        renders["target"] = np.stack([v.image for v in target_truth.views])
    sources, trusted = {}, {}
    measured_at = (root / "measures.json").stat().st_mtime if earlier else 0.0
    kept = {label for label in settings["runs"] if unchanged_since(chain.run(label), earlier, label, measured_at)} if earlier else set()
    kinds_to_measure = {run_kind(label)[0] for label in settings["runs"] if label not in kept}
    for kind in settings["stage_ends"]:
        source_key = f"source{KINDS[kind]['suffix']}"
        if (earlier and kind not in kinds_to_measure and source_key in earlier_renders
                and checkpoints_older_than(chain.reconstruction(kind), measured_at)):  # fmt: skip
            # no run of this kind to measure: the source reconstruction's measures and renders are kept
            result["train_views"], result["eval_views"] = earlier["train_views"], earlier["eval_views"]
            result["source_vs_scene"][kind] = earlier["source_vs_scene"][kind]
            trusted[kind] = earlier["source_vs_scene"][kind]["eval_views_read_right"]
            renders[source_key] = earlier_renders[source_key]
            print(f"source reconstruction ({kind}): unchanged since the chain's earlier measures, kept", flush=True)
            continue
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
        renders[source_key] = colours
        # the held-out views where the source reconstruction itself reads right: there a miss is the edit's
        trusted[kind] = [n for n in held_out if against_truth["colour"][names.index(n)] == source_colour]
        result["source_vs_scene"][kind]["eval_views_read_right"] = trusted[kind]
    train, held_out = result["train_views"], result["eval_views"]
    for label in settings["runs"]:
        kind = run_kind(label)[0]
        run_dir, caps = chain.run(label), settings["stage_ends"][kind]
        config = yaml_config(run_dir / "config.yml")
        ends, iterations = run_stage_ends(run_dir, caps, config["pds_iterations"])
        if label in kept:  # measured before, by these measures
            result["runs"][label] = {**earlier["runs"][label], "iterations": iterations, "seconds": stage_seconds(run_dir)}
            renders.update({f"{label}/{stage}": earlier_renders[f"{label}/{stage}"] for stage in STAGES})
            print(f"{label}: unchanged since the chain's earlier measures, kept", flush=True)
            continue
        renderer = RunRenderer(run_dir / "config.yml")
        measured = {}
        for stage in STAGES:
            stage_colours, stage_depths = renderer.render(ends[stage])
            per_view = view_measures(truth, stage_colours, stage_depths, sources[kind], target_truth)
            measured[stage] = {part: summarise(per_view, part_names, names, target, source_colour)
                               for part, part_names in (("train", train), ("eval", held_out))}  # fmt: skip
            if trusted[kind]:
                measured[stage]["eval_read_right"] = summarise(per_view, trusted[kind], names, target, source_colour)
            renders[f"{label}/{stage}"] = stage_colours
            if settings.get("clip_model"):
                measured[stage]["clip_directional"] = fm.clip_directional_similarity(
                    settings["clip_model"], sources[kind][0], stage_colours,
                    *prompts_of(chain, settings.get("prompt_template", "a {}"))
                )
        measured["iterations_to_edit"] = iterations_to_edit(
            run_dir, truth, target, config["change_view_every"], config["reconstruction_iterations"],
            target_truth,
        )
        measured["iterations"] = iterations
        measured["seconds"] = stage_seconds(run_dir)
        result["runs"][label] = measured
    (root / "measures.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez_compressed(root / "renders.npz", **{k: np.round(v * 255).astype(np.uint8) for k, v in renders.items()})
    return result


MEASURE_VERSION = 3
"""Raised whenever a measure changes (2: colours read in CIELAB, held-out views the source reads right; 3: silhouettes
at 10% of the extent in front of the background, not 2%); a chain's earlier measures are reused only when written by
the same version."""


def earlier_measures(root: Path) -> tuple[dict | None, dict[str, np.ndarray]]:
    """A chain's earlier measures.json and renders (as floats in [0, 1]) where the same MEASURE_VERSION wrote them."""
    path = root / "measures.json"
    earlier = json.loads(path.read_text()) if path.is_file() else None
    if not earlier or earlier.get("measure_version") != MEASURE_VERSION or not (root / "renders.npz").is_file():
        return None, {}
    with np.load(root / "renders.npz") as stored:
        return earlier, {key: stored[key].astype(np.float64) / 255 for key in stored.files}


def unchanged_since(run_dir: Path, earlier: dict, label: str, measured_at: float) -> bool:
    """Whether a run was measured in `earlier` (written at `measured_at`) and none of its checkpoints is newer."""
    return label in earlier["runs"] and checkpoints_older_than(run_dir, measured_at)


def checkpoints_older_than(run_dir: Path, measured_at: float) -> bool:
    """Whether a run has checkpoints and every one of them was written before `measured_at`."""
    checkpoints = list((run_dir / "nerfstudio_models").glob("*.ckpt"))
    return bool(checkpoints) and all(c.stat().st_mtime < measured_at for c in checkpoints)


def run_stage_ends(run_dir: Path, caps: dict[str, int], pds_cap: int) -> tuple[dict[str, int], dict[str, int]]:
    """(last step, iterations) of stages 1 and 2 of a run: where they ended (run_dir/stage_ends.json, written by
    every edit), else at their caps `caps` (the last steps of stage 1 and 2 at the options' lengths)."""
    path = run_dir / "stage_ends.json"
    if path.is_file():
        ended = json.loads(path.read_text())
        return ({stage: ended[stage]["last_step"] for stage in STAGES},
                {stage: ended[stage]["iterations"] for stage in STAGES})  # fmt: skip
    return dict(caps), {"pds": pds_cap, "refinement": caps["refinement"] - caps["pds"]}


def stage_seconds(run_dir: Path) -> dict[str, float | None]:
    """The wall time of stages 1 and 2 of a run, in seconds (run_dir/stage_ends.json; None for a run written before
    edits timed their stages, or a stage that a resumed process did not run from its start)."""
    path = run_dir / "stage_ends.json"
    ended = json.loads(path.read_text()) if path.is_file() else {}
    return {stage: ended.get(stage, {}).get("seconds") for stage in STAGES}


def prompts_of(chain: Chain, template: str) -> tuple[str, str]:
    return template.format(chain.source), template.format(chain.target)


def yaml_config(path: Path) -> dict:
    """The few pipeline options of a run that the measures need, read from its config.yml."""
    import yaml

    config = yaml.load(path.read_text(), Loader=yaml.Loader)
    return {"change_view_every": config.pipeline.change_view_every, "pds_iterations": config.pipeline.pds_iterations,
            "reconstruction_iterations": config.pipeline.reconstruction_iterations}
