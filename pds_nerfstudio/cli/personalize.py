"""``pds-personalize``: fine-tune a LoRA of the Stable Diffusion prior on a scene's training images (DreamBooth).

The authors' edits use a DreamBooth checkpoint with a special token ("a photo of a sks man" -> "a photo of a
sks Spider Man"): it narrows the gap between what the prompt says and what the photos show. This trains a
LoRA of the UNet instead of a whole copy (megabytes, not gigabytes) and writes it, with `pds_lora.json`,
into OUTPUT; `ns-train pds --pipeline.prior.lora OUTPUT` (and `pds-splat`, `pds-edit-image --prior.lora`)
then edit with it::

    pds-personalize --data scene --instance-prompt "a photo of a sks man" --output lora/ \\
        --class-prompt "a photo of a man"
    ns-train pds --data scene --pipeline.prior.lora lora/ \\
        --pipeline.source-prompt "a photo of a sks man" --pipeline.target-prompt "a photo of a sks Spider Man"

The scene is read as `ns-train pds` reads it (its training split; any image mode; never written).
"""

from __future__ import annotations

import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
import tyro
from jaxtyping import Float
from torch import Tensor

from pds_nerfstudio.data.image_io import save_png
from pds_nerfstudio.prior.lora import LORA_INFO, LORA_WEIGHTS, LoraInfo, base_model_key, save_lora
from pds_nerfstudio.prior.dreambooth import PersonalizeOptions, personalize
from pds_nerfstudio.prior.stable_diffusion import DiffusionPrior, DiffusionPriorConfig, PriorLoadError
from pds_nerfstudio.guidance.resizing import prior_size, to_prior_input

PROG = "pds-personalize"


@dataclass
class PersonalizeConfig:
    """Fine-tune a LoRA of a Stable Diffusion prior on a scene's training images (DreamBooth with a special token)."""

    data: Path
    """The nerfstudio scene (transforms.json and images): its training views are the instance images."""
    instance_prompt: str
    """Prompt with a rare token that names this scene's subject, e.g. "a photo of a sks man"; use it in the
    edit's source and target prompts."""
    output: Path
    """Folder for the LoRA (pytorch_lora_weights.safetensors and pds_lora.json); must be empty or missing."""
    class_prompt: Optional[str] = None
    """The subject's class without the token, e.g. "a photo of a man": adds prior preservation, training on
    images that the base model draws from it, so that the class keeps its meaning. None: no preservation."""
    num_class_images: int = 50
    """Class images the base model draws for prior preservation (with --class-prompt)."""
    steps: int = 400
    """Optimiser steps."""
    rank: int = 4
    """LoRA rank of the UNet's attention projections."""
    learning_rate: float = 1e-4
    """AdamW learning rate of the LoRA."""
    resolution: Optional[int] = None
    """Short side of the training images (None: the prior's native size, 512 for SD 1.5)."""
    prior_loss_weight: float = 1.0
    """Weight of the class images' loss (with --class-prompt)."""
    seed: int = 0
    """Seed of the class images, the image order, the timesteps and the noises."""
    prior: DiffusionPriorConfig = field(default_factory=lambda: DiffusionPriorConfig(dtype="fp32"))
    """The base model (as `ns-train pds --pipeline.prior.model-id` takes it); trained in fp32 by default."""


class UsageError(Exception):
    """Bad options or input; one line, exit status 2."""


def validate(config: PersonalizeConfig) -> None:
    """Every check that needs no weights."""
    from pds_nerfstudio.data.scene_checks import validate_scene

    if not config.instance_prompt.strip():
        raise UsageError("--instance-prompt is empty: name the scene's subject with a rare token, e.g. 'a photo of a sks man'")
    if config.class_prompt is not None and not config.class_prompt.strip():
        raise UsageError("--class-prompt is empty: give the subject's class, or leave it out for no prior preservation")
    for name in ("steps", "rank", "num_class_images"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if not config.learning_rate > 0:
        raise UsageError(f"--learning-rate must be > 0, got {config.learning_rate}")
    if config.resolution is not None and config.resolution < 16:
        raise UsageError(f"--resolution must be at least 16 pixels, got {config.resolution}")
    if config.output.exists() and (not config.output.is_dir() or any(config.output.iterdir())):
        raise UsageError(f"--output {config.output} is not empty: give a new folder (a LoRA is never overwritten)")
    try:
        validate_scene(config.data)
    except ValueError as err:
        raise UsageError(str(err)) from err


def scene_images(scene: Path) -> List[Float[Tensor, "3 height width"]]:
    """The training views of `scene` as `ns-train pds` reads them (its dataparser's training split, any image mode
    as 8-bit RGB(A)), alpha composited on white, as floats in [0, 1]."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    from pds_nerfstudio.data.dataset import has_transparency, read_image

    outputs = NerfstudioDataParserConfig(data=scene, downscale_factor=1).setup().get_dataparser_outputs("train")
    paths = outputs.image_filenames
    alpha = any(has_transparency(path) for path in paths)
    images = []
    for path in paths:
        try:
            pixels = np.asarray(read_image(path, alpha), dtype=np.float32) / 255
        except ValueError as err:
            raise UsageError(str(err)) from err
        if alpha:
            pixels = pixels[..., :3] * pixels[..., 3:] + (1 - pixels[..., 3:])
        images.append(torch.from_numpy(pixels).permute(2, 0, 1))
    return images


@torch.no_grad()
def encode(prior: DiffusionPrior, images: List[Tensor], short_side: int) -> Float[Tensor, "n 4 h w"]:
    """Latents of `images`, each resized so its short side is `short_side` (multiples of the VAE's factor)."""
    latents = []
    for image in images:
        size = prior_size(image.shape[1], image.shape[2], short_side, prior.vae_scale_factor)
        latents.append(prior.encode(to_prior_input(image.permute(1, 2, 0).to(prior.device), size)).float())
    return torch.cat(latents)


@torch.no_grad()
def class_images(prior: DiffusionPrior, prompt: str, count: int, size: tuple[int, int], seed: int) -> Tensor:
    """`count` images the base model draws for `prompt` (diffusers' StableDiffusionPipeline, DDIM 25 steps,
    guidance 7.5), as floats (count, 3, h, w) in [0, 1]."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=prior.vae, text_encoder=prior.text_encoder, tokenizer=prior.tokenizer,
                                   unet=prior.unet, scheduler=prior.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    drawn = [pipe(prompt, height=size[0], width=size[1], num_inference_steps=25, guidance_scale=7.5,
                  generator=generator, output_type="pt").images[0].float().cpu() for _ in range(count)]  # fmt: skip
    return torch.stack(drawn)


def main(config: PersonalizeConfig) -> LoraInfo:
    """Trains and writes the LoRA; returns what `pds_lora.json` says."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    validate(config)
    images = scene_images(config.data)
    prior = DiffusionPrior(config.prior, option_prefix="--prior.")
    if config.prior.lora is not None:
        raise UsageError("--prior.lora: personalise the base model, not a personalised one (leave it out)")
    try:
        prior.load()
    except ValueError as err:
        raise UsageError(str(err)) from err
    short_side = config.resolution or prior.native_resolution
    instance = encode(prior, images, short_side)
    # Written beside OUTPUT first, moved there at the end: a failed or interrupted run leaves OUTPUT as it was.
    staging = config.output.parent / f".{config.output.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    class_latents = None
    if config.class_prompt is not None:
        size = (instance.shape[2] * prior.vae_scale_factor, instance.shape[3] * prior.vae_scale_factor)
        drawn = class_images(prior, config.class_prompt, config.num_class_images, size, config.seed)
        for index, image in enumerate(drawn):
            save_png(image.permute(1, 2, 0), staging / "class_images" / f"{index:04d}.png")
        class_latents = encode(prior, list(drawn), short_side)
    options = PersonalizeOptions(steps=config.steps, rank=config.rank, learning_rate=config.learning_rate,
                                 prior_loss_weight=config.prior_loss_weight, seed=config.seed)  # fmt: skip
    columns = (TextColumn("[bold]personalising"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns) as progress:
        task = progress.add_task("personalising", total=config.steps, loss="-")
        losses = personalize(prior, instance, config.instance_prompt, options, class_latents, config.class_prompt,
                             on_step=lambda step, loss: progress.update(task, advance=1, loss=f"{loss:.4f}"))  # fmt: skip
    save_lora(prior.unet, staging)
    tenth = max(1, len(losses) // 10)
    info = LoraInfo(
        base_model=base_model_key(config.prior.model_id), instance_prompt=config.instance_prompt,
        class_prompt=config.class_prompt, rank=config.rank, steps=config.steps, learning_rate=config.learning_rate,
        resolution=[int(instance.shape[2] * prior.vae_scale_factor), int(instance.shape[3] * prior.vae_scale_factor)],
        images=len(images), losses={"first_tenth": float(np.mean(losses[:tenth])), "last_tenth": float(np.mean(losses[-tenth:]))},
    )  # fmt: skip
    info.write(staging)
    if config.output.exists():
        config.output.rmdir()  # empty: checked by validate
    staging.rename(config.output)
    return info


def entrypoint() -> None:
    """Console script ``pds-personalize``: errors are one line on stderr, never a traceback."""
    config = tyro.cli(PersonalizeConfig, description=__doc__.splitlines()[0])
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        info = main(config)
    except UsageError as err:
        _fail(str(err), 2)
    except PriorLoadError as err:
        _fail(str(err), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    print(f"wrote {config.output / LORA_WEIGHTS} and {config.output / LORA_INFO}: {info.images} images, "
          f"{info.steps} steps, training loss {info.losses['first_tenth']:.4f} -> {info.losses['last_tenth']:.4f}")  # fmt: skip
    print(f"edit with: ns-train pds --data {config.data} --pipeline.prior.lora {config.output} "
          f"--pipeline.prior.model-id {config.prior.model_id} --pipeline.source-prompt {config.instance_prompt!r} "
          "--pipeline.target-prompt '...'")  # fmt: skip


def _fail(message: str, status: int) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    entrypoint()
