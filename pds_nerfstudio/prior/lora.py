"""A LoRA of the prior's UNet, made for one scene (`pds-personalize`), loaded on top of its base model.

The authors personalise Stable Diffusion with DreamBooth and keep a whole copy of it per scene (gigabytes). A
LoRA of the UNet's attention projections (diffusers' `add_adapter` / `load_lora_adapter`, with peft) does the
same job in megabytes. A LoRA folder holds diffusers' `pytorch_lora_weights.safetensors` and `pds_lora.json`,
which names the base model it was trained on and the prompts it learned.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch

from pds_nerfstudio.prior.hub import looks_like_local_path

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
"""diffusers' file name for a pipeline's LoRA weights."""
LORA_INFO = "pds_lora.json"
"""What the LoRA was made from: written by `pds-personalize`, checked before a prior loads it."""
TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
"""The UNet's attention projections, where DreamBooth-LoRA adapts Stable Diffusion."""


@dataclass
class LoraInfo:
    """The contents of `pds_lora.json`."""

    base_model: str
    """The prior the LoRA was trained on (hub id, or the folder's absolute path)."""
    instance_prompt: str
    class_prompt: Optional[str]
    rank: int
    steps: int
    learning_rate: float
    resolution: List[int]
    """(height, width) of the latents' images during training."""
    images: int
    """Training images of the scene."""
    losses: Dict[str, float] = field(default_factory=dict)
    """Mean training loss over the first and the last tenth of the steps."""

    def write(self, folder: Path) -> None:
        (folder / LORA_INFO).write_text(json.dumps(asdict(self), indent=2) + "\n")


def base_model_key(model_id: str) -> str:
    """A prior's identity for comparisons: a local folder's absolute path, or the hub id as given."""
    return str(Path(model_id).expanduser().resolve()) if looks_like_local_path(model_id) else model_id


def check_lora(lora_dir: str, model_id: str, option: str = "--pipeline.prior.lora") -> LoraInfo:
    """The LoRA folder's info; ValueError (one line, naming `option`) when its files are missing or it was made
    for another base model. Reads two small files: nothing heavy loads."""
    folder = Path(lora_dir).expanduser()
    if not (folder / LORA_INFO).is_file() or not (folder / LORA_WEIGHTS).is_file():
        missing = [name for name in (LORA_INFO, LORA_WEIGHTS) if not (folder / name).is_file()]
        raise ValueError(
            f"{option} {lora_dir}: not a LoRA folder of pds-personalize (missing {', '.join(missing)}); "
            "make one with `pds-personalize --data SCENE --instance-prompt ... --output DIR`"
        )
    info = LoraInfo(**json.loads((folder / LORA_INFO).read_text()))
    if base_model_key(info.base_model) != base_model_key(model_id):
        raise ValueError(
            f"{option} {lora_dir} was trained on {info.base_model}, but the prior is {model_id}: use the same "
            "--pipeline.prior.model-id as pds-personalize did, or personalise this prior"
        )
    return info


def lora_config(rank: int):
    """peft's LoraConfig of a DreamBooth-LoRA of rank `rank` (alpha = rank: the update is B A, unscaled)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(TARGET_MODULES))


def apply_lora(unet: torch.nn.Module, lora_dir: str) -> None:
    """Loads the LoRA into `unet` and merges it into the weights (no adapter left: the prior runs at full speed)."""
    unet.load_lora_adapter(str(Path(lora_dir).expanduser()), weight_name=LORA_WEIGHTS, prefix="unet",
                           adapter_name="scene")  # fmt: skip
    unet.fuse_lora(adapter_names=["scene"])
    unet.unload_lora()


def save_lora(unet: torch.nn.Module, folder: Path) -> None:
    """Writes the UNet's LoRA layers as diffusers' `pytorch_lora_weights.safetensors`."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="scene"))
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_WEIGHTS)
