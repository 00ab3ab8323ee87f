"""The SVG edit matrix's drawings and measures, the toy vector prior's training set and sample reading, and the
rasteriser benchmark, on known answers and the tiny random prior."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pds_nerfstudio.measure import prior_colours, svg_matrix, svg_speed
from pds_nerfstudio.measure.svg_matrix import EDITS, measure
from pds_nerfstudio.svg.parse import scene_of
from pds_nerfstudio.synthetic.flat_shapes import FlatShape, caption_of, drawing_svg
from pds_nerfstudio.synthetic.procedural_scene import PALETTE
from pds_nerfstudio.synthetic.vector_prior import VectorPriorRecipe, render_drawing


def parsed(text: str):
    import svgelements

    return scene_of(svgelements.SVG.parse(io.StringIO(text)), "test")


def test_edits_name_one_shape_each():
    for edit in EDITS:
        source, target = edit.source_prompt.split(" and "), edit.target_prompt.split(" and ")
        changed = [i for i, (a, b) in enumerate(zip(source, target)) if a != b]
        assert changed == [edit.edited], edit.name
        assert target[edit.edited] == f"a {edit.target_colour} {edit.shapes[edit.edited].shape}"


def test_measure_of_an_exact_recolour():
    edit = next(e for e in EDITS if e.name == "two-shapes-rectangle-to-red")
    source = parsed(edit.svg())
    fill = source.fill_colour.clone()
    fill[1, :3] = torch.tensor(PALETTE["red"])  # shape 0 is the background rectangle
    result = measure(edit, source, source.with_parameters(fill_colour=fill), "pds", 1.0)
    assert result.reached and result.reads_as == "red" and result.target_distance == pytest.approx(0, abs=1e-6)
    assert result.others_colour_change == pytest.approx(0) and result.others_displacement == 0
    assert result.background_psnr >= 99  # untouched: the floor of the MSE


def test_measure_sees_moved_points_and_a_repainted_background():
    edit = next(e for e in EDITS if e.name == "purple-rectangle-to-orange")
    source = parsed(edit.svg())
    points = source.points.clone()
    rows = torch.unique(source.segment_points[source.segment_contour == 1])  # the rectangle
    points[rows] += torch.tensor([25.6, 0.0])
    fill = source.fill_colour.clone()
    fill[0, :3] = torch.tensor([0.9, 0.9, 0.9]) - torch.tensor([0.0, 0.1, 0.0])  # background a little greener
    result = measure(edit, source, source.with_parameters(points=points, fill_colour=fill), "sds", 1.0)
    assert result.reads_as == "purple" and not result.reached and result.on_pale
    assert result.edited_displacement == pytest.approx(0.1)
    assert result.others_colour_change is None
    mse = np.mean((np.array([0.9, 0.8, 0.9]) - np.array(svg_matrix.PALE)) ** 2)
    assert result.background_psnr == pytest.approx(10 * math.log10(1 / mse), abs=0.05)


@pytest.mark.usefixtures("offline_hub")
def test_matrix_runs_and_writes_its_files(tmp_path: Path, tiny_prior_dir: Path):
    measures = svg_matrix.run_matrix(tmp_path, tiny_prior_dir, ["pds", "sds"], steps=1, guidance_scale=100.0,
                                     edits=EDITS[3:4], log=lambda m: None)  # fmt: skip
    assert [m.method for m in measures] == ["pds", "sds"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["edits"][0]["target"] == "a green circle and a blue square"
    assert "| PDS | " in (tmp_path / "table.md").read_text()
    assert (tmp_path / "matrix.png").is_file() and (tmp_path / f"{EDITS[3].name}.pds.svg").is_file()


def test_table_sums_up_every_seed_and_the_pale_backgrounds():
    def row(seed: int, reached: bool, pale: bool, psnr: float) -> svg_matrix.EditMeasure:
        return svg_matrix.EditMeasure("e", "pds", "red", "red" if reached else "gray", reached, 0.1, 0.02, None, None,
                                      psnr, 1.0, on_pale=pale, seed=seed)  # fmt: skip

    rows = [row(0, True, False, 80.0), row(0, False, True, 20.0), row(1, True, False, 70.0), row(1, True, True, 30.0)]
    summary, _, head, _, *edits = svg_matrix.table(rows, ["pds"]).splitlines()[2:]
    assert summary == "| PDS | 3 of 4 | 0.100 | - | - | 2.0 | 50.0 | 25.0 |"
    assert head.startswith("| edit | seed | method |") and edits[1].startswith("| e | 0 | PDS | gray (missed) |")
    assert "| seed |" not in svg_matrix.table(rows[:2], ["pds"])  # one seed: no seed column
    assert svg_matrix.EDITS[2].background == svg_matrix.PALE  # the purple rectangle sits on a pale rectangle


# ------------------------------------------------------------------ the toy vector prior's data


def test_flat_drawing_renders_its_colours():
    shapes = (FlatShape("red", "circle", (0.27, 0.5), 0.3), FlatShape("blue", "rectangle", (0.73, 0.5), 0.4, 2.0, True))
    assert caption_of(shapes) == "a red circle and a blue rectangle"
    image = render_drawing(shapes, (1.0, 1.0, 1.0), 64).permute(1, 2, 0).numpy() / 255
    assert prior_colours.palette_labels(image[32, 17][None, None])[0, 0] == list(PALETTE).index("red")
    assert prior_colours.palette_labels(image[32, 47][None, None])[0, 0] == list(PALETTE).index("blue")
    assert prior_colours.reads_as_pair(image, ("red", "blue")) and not prior_colours.reads_as_pair(image, ("red", "green"))
    single = render_drawing(shapes[:1], (0.9, 0.95, 1.0), 64).permute(1, 2, 0).numpy() / 255
    assert prior_colours.reads_as_single(single, "red") and not prior_colours.reads_as_single(single, "orange")


def test_prior_colours_read_a_darkened_orange_as_orange():
    """The toy priors' VAE draws the palette's orange (0.95, 0.50, 0.10) darker: (0.77, 0.33, 0.05) is the median
    of one of the vector prior's "a orange circle" samples (docs/svg.md). The Euclidean RGB rule read it as red;
    the fidelity matrix's colour rule reads it as orange."""
    drawn = np.asarray([[[0.77, 0.33, 0.05]]])
    assert list(PALETTE)[int(prior_colours.palette_labels(drawn)[0, 0])] == "orange"
    assert list(PALETTE)[int(prior_colours.palette_labels(drawn, "rgb")[0, 0])] == "red"


def test_vector_recipe_labels_every_drawing_with_its_caption():
    recipe = VectorPriorRecipe(drawings_per_caption=1, pair_drawings=6, colours=("red", "blue"))
    captions = recipe.captions()
    assert captions[:6] == ["a red circle", "a red square", "a red rectangle", "a blue circle", "a blue square",
                            "a blue rectangle"]  # fmt: skip
    assert "a red circle and a blue square" in captions and "a red circle and a red square" not in captions
    images, labels = recipe.training_set(Path("unused"))
    assert images.shape == (12, 3, 64, 64) and images.dtype == torch.uint8
    assert labels[:6].tolist() == list(range(6)) and (labels[6:] >= 6).all()
    for image, label in zip(images[:6], labels[:6]):
        colour = captions[label].split()[1]
        assert prior_colours.reads_as_single(image.permute(1, 2, 0).numpy() / 255, colour)


def test_vector_recipe_refuses_unknown_shapes():
    with pytest.raises(ValueError, match="unknown colours or shapes"):
        VectorPriorRecipe(shapes=("sphere",))


def test_shipped_vector_prior_is_small_with_the_toy_prior():
    from pds_nerfstudio.synthetic.embedded_prior import EMBEDDED_TOY_PRIOR
    from pds_nerfstudio.synthetic.vector_prior import EMBEDDED_VECTOR_PRIOR

    if not (EMBEDDED_VECTOR_PRIOR / "model_index.json").is_file():
        pytest.skip("the toy vector prior is not in this tree")
    assets = EMBEDDED_TOY_PRIOR.parent
    total = sum(path.stat().st_size for path in assets.rglob("*") if path.is_file())
    assert total <= 20e6, f"assets are {total / 1e6:.1f} MB"


# ------------------------------------------------------------------ the benchmark


def test_benchmark_prints_a_table(capsys):
    assert svg_speed.main(["--paths", "4", "--sizes", "32", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| cpu | 32x32 |" in out and "4x4 supersampled" in out


def test_benchmark_drawing_has_the_paths_asked_for():
    scene = parsed(svg_speed.benchmark_drawing(7))
    assert scene.num_shapes == 7 and bool(scene.has_stroke.all()) and int(scene.segment_kind.shape[0]) == 28
    assert drawing_svg((), 10.0).startswith("<svg")


@pytest.mark.usefixtures("offline_hub")
def test_shipped_vector_prior_loads_as_a_stable_diffusion_folder():
    from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig
    from pds_nerfstudio.synthetic.vector_prior import EMBEDDED_VECTOR_PRIOR

    if not (EMBEDDED_VECTOR_PRIOR / "model_index.json").is_file():
        pytest.skip("the toy vector prior is not in this tree")
    prior = DiffusionPrior(DiffusionPriorConfig(model_id=str(EMBEDDED_VECTOR_PRIOR), dtype="fp32", device="cpu"))
    assert prior.native_resolution == 64
    red, blue = prior.text_embeddings(["a red circle", "a blue circle"])
    assert not torch.allclose(red, blue)
    recipe = json.loads((EMBEDDED_VECTOR_PRIOR / "toy_prior_recipe.json").read_text())
    assert recipe["recipe"]["shapes"] == ["circle", "square", "rectangle"] and recipe["threads"] == 1
