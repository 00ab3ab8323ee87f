"""GuidanceOptions: one set of guidance options and checks for every editor (a scene edit's pipeline config is
one), and its one guidance_gradient call."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from analytic import DTYPE, gaussian_eps_fn, sd_alphas_cumprod

from pds_nerfstudio.guidance import guidance_gradient
from pds_nerfstudio.guidance.options import GuidanceOptions


class GaussianPrior:
    """Data N(mean of the prompt, 0.5^2 I): the exact noise predictor (tests/analytic.py); each prompt's mean is
    its length, so that two prompts differ."""

    def __init__(self) -> None:
        self.alphas_cumprod = sd_alphas_cumprod()

    def eps_fn(self, guidance_scale: float):
        return gaussian_eps_fn(self.alphas_cumprod, 0.5)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([torch.full((4, 8, 8), float(len(prompt)), dtype=DTYPE) for prompt in prompts])


@pytest.mark.parametrize("method", ["pds", "sds", "dds"])
def test_the_options_make_the_same_guidance_gradient_call_as_written_out(method: str) -> None:
    prior, x0_src = GaussianPrior(), torch.randn(1, 4, 8, 8, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    options = GuidanceOptions("a red sphere", "a blue sphere", method, "paper", 30.0, 0.1, 0.9, 250)
    x0_tgt = x0_src + 0.1
    output = options.guidance_gradient(prior, x0_tgt, x0_src, torch.Generator().manual_seed(7))
    reference = guidance_gradient(
        method, x0_tgt, prior.eps_fn(30.0), prior.alphas_cumprod, prior.text_embeddings(["a blue sphere"]),
        x0_src if method != "sds" else None, prior.text_embeddings(["a red sphere"]) if method != "sds" else None,
        weighting="paper", generator=torch.Generator().manual_seed(7), num_subset_steps=250, ratio_range=(0.1, 0.9),
    )  # fmt: skip
    assert torch.equal(output.grad, reference.grad) and torch.equal(output.t, reference.t)
    assert 100 <= int(output.t[0]) < 900 and int(output.t[0]) % 4 == 0  # tau_i = 4 i, i in [0.1 S, 0.9 S)


@pytest.mark.parametrize(
    ("change", "pipeline_message", "image_message"),
    [
        ({"target_prompt": " "}, "set --pipeline.target-prompt", "set --target-prompt"),
        ({"source_prompt": ""}, "set --pipeline.source-prompt", "set --source-prompt"),
        ({"guidance_scale": 0.0}, "set --pipeline.guidance-scale", "set --guidance-scale"),
        ({"min_step_ratio": 0.6, "max_step_ratio": 0.5}, "--pipeline.min-step-ratio and --pipeline.max-step-ratio",
         "--min-step-ratio and --max-step-ratio"),
        ({"min_step_ratio": 0.0, "max_step_ratio": 0.001}, "contains no index", "--max-step-ratio (0.0, 0.001)"),
        ({"num_subset_steps": 0}, "--pipeline.num-subset-steps must be >= 1", "--num-subset-steps must be >= 1"),
    ],
)  # fmt: skip
def test_each_bad_option_is_named_as_its_command_line_spells_it(
    change: dict, pipeline_message: str, image_message: str
) -> None:
    options = replace(GuidanceOptions("a red sphere", "a blue sphere"), **change)
    for prefix, message in (("--pipeline.", pipeline_message), ("--", image_message)):
        with pytest.raises(ValueError) as error:
            options.validate_guidance(prefix)
        assert message in str(error.value)
    assert replace(options, **{key: getattr(GuidanceOptions("a", "b"), key) for key in change}).validate_guidance("--") is None


def test_sds_needs_no_source_prompt() -> None:
    GuidanceOptions("", "a blue sphere", method="sds").validate_guidance("--")
    with pytest.raises(ValueError, match="source prompt is empty"):
        GuidanceOptions("", "a blue sphere", method="pds").validate_guidance("--")
