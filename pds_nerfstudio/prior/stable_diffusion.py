"""The diffusion prior: a frozen Stable Diffusion 1.x/2.x (diffusers format) behind a small interface.

Nothing is loaded until first use (or an explicit :meth:`DiffusionPrior.load`), so configs and CLIs
can be built, validated and printed without touching the hub or the GPU. diffusers and
transformers are imported inside :meth:`DiffusionPrior.load` for the same reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence, Tuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from pds_nerfstudio.guidance import EpsFn
from pds_nerfstudio.prior.hub import hub_offline, looks_like_local_path
from pds_nerfstudio.prior.lora import apply_lora, check_lora
from pds_nerfstudio.guidance.options import validate_guidance_scale
from pds_nerfstudio.guidance.resizing import prior_size

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PIPELINE_SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DEFAULT_OPTION_PREFIX = "--pipeline.prior."


@dataclass
class DiffusionPriorConfig:
    """Which Stable Diffusion checkpoint to use as the prior, and how to run it.

    The authors' ``runwayml/stable-diffusion-v1-5`` is gone from the hub; the default is its maintained copy.
    """

    model_id: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Hub id or local folder of a Stable Diffusion 1.x/2.x pipeline in diffusers format."""
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"
    """Compute dtype of the UNet, VAE and text encoder; fp16 on a CPU device falls back to fp32 (warned)."""
    device: str | None = None
    """Device of the prior ("cuda", "cuda:1", "cpu"; None: cuda if available); may differ from the scene's."""
    batched_guidance: bool = True
    """Both branches and both guidance halves in one UNet call (batch 4 for PDS); False: the authors'
    call pattern, one call of batch 2 per branch (the plain reference, for benchmarks)."""
    channels_last: bool = True
    """Run the UNet in channels-last memory format (faster convolutions on CUDA tensor cores)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) passed to from_pretrained; None: the default branch."""
    variant: str | None = None
    """Weight-file variant passed to from_pretrained, e.g. "fp16" to download half-size weights."""
    lora: str | None = None
    """A LoRA of the UNet made for this scene by `pds-personalize` (its output folder), merged into the base
    model's weights when the prior loads; it must have been trained on `model-id`. None: the base model."""


class PriorLoadError(RuntimeError):
    """The prior's weights could not be loaded; the message says which option to change and how."""


def resolve_device(device: str | None) -> torch.device:
    """The configured device, or cuda when available, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_error_message(model_id: str, reason: str, option_prefix: str = DEFAULT_OPTION_PREFIX) -> str:
    """One self-contained line: what failed, which option sets it, the offline state, the fix."""
    offline = "HF_HUB_OFFLINE=1 is set (offline: only the local cache is used)" if hub_offline() else (
        "HF_HUB_OFFLINE is not set (the hub is contacted)"
    )
    return (
        f"cannot load the diffusion prior {model_id!r}: {reason}. It is set by {option_prefix}model-id "
        f"(python: DiffusionPriorConfig.model_id). {offline}. Fix: download the weights once with network "
        "access, e.g. `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5`, then run with "
        f"HF_HUB_OFFLINE=1; or point {option_prefix}model-id to a local folder of a diffusers Stable "
        f"Diffusion pipeline (with {', '.join(s + '/' for s in PIPELINE_SUBFOLDERS)})."
    )


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()).rstrip(".") or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class DiffusionPrior:
    """A frozen Stable Diffusion: VAE encode/decode, cached text embeddings, guided noise prediction.

    Latents are ``vae.encode(2 x - 1).mean * scaling_factor`` for images x in [0, 1]. Noise
    predictions are always epsilon (v-prediction models are converted), float32.
    """

    def __init__(self, config: DiffusionPriorConfig, option_prefix: str = DEFAULT_OPTION_PREFIX) -> None:
        """Stores the config only; weights load on :meth:`load` or first use.

        Args:
            config: Which checkpoint, dtype and device.
            option_prefix: How the CLI spells the config's options, for error messages.
        """
        self.config = config
        self.option_prefix = option_prefix
        self._loaded = False
        self._embedding_cache: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ loading

    @property
    def device(self) -> torch.device:
        try:
            return resolve_device(self.config.device)
        except RuntimeError as err:  # torch.device("gpu") and the like
            raise ValueError(f"bad device {self.config.device!r} ({err}): set {self.option_prefix}device") from err

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype actually used (fp16 on CPU falls back to fp32)."""
        if self.config.dtype not in DTYPES:
            raise ValueError(
                f"dtype must be one of {', '.join(DTYPES)}, got {self.config.dtype!r}: set {self.option_prefix}dtype"
            )
        if self.config.dtype == "fp16" and self.device.type == "cpu":
            return torch.float32
        return DTYPES[self.config.dtype]

    def load(self) -> None:
        """Load and freeze unet, vae, text encoder, tokenizer and scheduler; a no-op once loaded.

        Raises:
            PriorLoadError: the checkpoint cannot be found, read, or is not a diffusers SD pipeline.
            ValueError: a bad dtype or device option.
        """
        if self._loaded:
            return
        device, dtype = self.device, self.dtype
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r} asked for, but CUDA is not available: set {self.option_prefix}device"
            )
        if self.config.lora is not None:
            check_lora(self.config.lora, self.config.model_id, f"{self.option_prefix}lora")
        components = self._load_components(dtype)
        if self.config.lora is not None:
            apply_lora(components["unet"], self.config.lora)
        if self.config.dtype == "fp16" and device.type == "cpu":
            warnings.warn("fp16 is not supported on the CPU: the prior runs in fp32", stacklevel=2)
        for name in ("unet", "vae", "text_encoder"):
            module = components[name]
            module.requires_grad_(False)
            module.eval()
            module.to(device)  # already in `dtype`: loaded with it
        if self.config.channels_last:
            components["unet"].to(memory_format=torch.channels_last)
        self.unet: UNet2DConditionModel = components["unet"]
        self.vae: AutoencoderKL = components["vae"]
        self.text_encoder: CLIPTextModel = components["text_encoder"]
        self.tokenizer: CLIPTokenizer = components["tokenizer"]
        self.scheduler: SchedulerMixin = components["scheduler"]
        self._alphas_cumprod = self.scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)
        self._loaded = True

    def _load_components(self, dtype: torch.dtype) -> dict[str, Any]:
        """from_pretrained of each subfolder; every failure becomes one PriorLoadError."""
        model_id = self.config.model_id
        if looks_like_local_path(model_id):
            folder = Path(model_id).expanduser()
            if not folder.is_dir():
                raise PriorLoadError(self._message(model_id, f"the folder {str(folder)!r} does not exist"))
            missing = [s for s in PIPELINE_SUBFOLDERS if not (folder / s).is_dir()]
            if missing:
                raise PriorLoadError(
                    self._message(
                        model_id,
                        f"the folder is not a diffusers Stable Diffusion pipeline (missing {', '.join(missing)})",
                    )
                )
            model_id = str(folder)
        try:
            from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
            from diffusers.utils import is_accelerate_available
            from transformers import CLIPTextModel, CLIPTokenizer

            common = {"revision": self.config.revision}
            weights = {**common, "variant": self.config.variant}
            # Without accelerate diffusers prints a long notice unless told not to try low-memory loading.
            diffusers_weights = {**weights, "torch_dtype": dtype, "low_cpu_mem_usage": is_accelerate_available()}
            with warnings.catch_warnings():
                # transformers and diffusers warn about unused config keys of older checkpoints.
                warnings.simplefilter("ignore")
                return {
                    "tokenizer": CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", **common),
                    # Any SD scheduler config yields the same training schedule (betas, alphas_cumprod).
                    "scheduler": DDIMScheduler.from_pretrained(model_id, subfolder="scheduler", **common),
                    "text_encoder": CLIPTextModel.from_pretrained(
                        model_id, subfolder="text_encoder", dtype=dtype, **weights
                    ),
                    "vae": AutoencoderKL.from_pretrained(model_id, subfolder="vae", **diffusers_weights),
                    "unet": UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", **diffusers_weights),
                }
        except Exception as err:  # hub, filesystem, format: all mean "this checkpoint cannot be used"
            reason = _one_line(err)
            if hub_offline() and not looks_like_local_path(self.config.model_id):
                reason = f"it is not (completely) in the local Hugging Face cache ({reason})"
            raise PriorLoadError(self._message(self.config.model_id, reason)) from err

    def _message(self, model_id: str, reason: str) -> str:
        return load_error_message(model_id, reason, self.option_prefix)

    # --------------------------------------------------------------- schedule

    @property
    def alphas_cumprod(self) -> Float[Tensor, "num_train_timesteps"]:
        """abar_t of the prior's training schedule, float64 on the prior's device."""
        self.load()
        return self._alphas_cumprod

    @property
    def num_train_timesteps(self) -> int:
        self.load()
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def prediction_type(self) -> str:
        """"epsilon" (SD 1.x, SD 2.x base) or "v_prediction" (SD 2.x 768)."""
        self.load()
        return str(self.scheduler.config.get("prediction_type", "epsilon"))

    @property
    def ddim_settings(self) -> dict[str, int | float]:
        """Keywords of :func:`pds_nerfstudio.guidance.sdedit.sdedit` (and of ``blended_samples``) that make their
        DDIM steps this scheduler's own: its ``steps_offset`` (1 in SD 1.x and 2.x), and the abar its last step
        goes to (1 under ``set_alpha_to_one``, else abar_0, which SD 1.x and 2.x choose). Steps are spaced
        "leading", as in those configs."""
        self.load()
        return {"steps_offset": int(self.scheduler.config.get("steps_offset", 0)),
                "final_alpha_cumprod": float(self.scheduler.final_alpha_cumprod)}  # fmt: skip

    @property
    def vae_scale_factor(self) -> int:
        self.load()
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_resolution(self) -> int:
        """Image side the UNet was trained at: 512 for SD 1.5, 768 for SD 2.x-v."""
        self.load()
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        """The size an image of `height` x `width` is resized to for this prior (resizing.prior_size)."""
        return prior_size(height, width, self.native_resolution, self.vae_scale_factor)

    # ------------------------------------------------------------------- text

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> Float[Tensor, "1 77 dim"]:
        """CLIP last hidden state of one prompt, cached by its string (the same tensor on a hit)."""
        cached = self._embedding_cache.get(prompt)
        if cached is not None:
            return cached
        self.load()
        tokens = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        embedding = self.text_encoder(tokens.input_ids.to(self.device))[0]
        self._embedding_cache[prompt] = embedding
        return embedding

    def text_embeddings(self, prompts: Sequence[str]) -> Float[Tensor, "batch 77 dim"]:
        """Conditional embeddings of several prompts, stacked; each one cached."""
        if isinstance(prompts, str):
            raise TypeError("text_embeddings takes a sequence of prompts; use text_embedding for one")
        return torch.cat([self.text_embedding(prompt) for prompt in prompts])

    @property
    def unconditional_embedding(self) -> Float[Tensor, "1 77 dim"]:
        """Embedding of the empty prompt, the unconditional branch of classifier-free guidance."""
        return self.text_embedding("")

    # -------------------------------------------------------------------- VAE

    def encode(self, images: Float[Tensor, "batch 3 height width"], sample: bool = False,
               generator: torch.Generator | None = None) -> Float[Tensor, "batch 4 h w"]:
        """Latents of images in [0, 1]; differentiable with respect to the images.

        Args:
            images: RGB in [0, 1], any device or dtype; height and width multiples of vae_scale_factor.
            sample: Draw from the VAE posterior (the authors' choice) instead of taking its mean.
            generator: RNG for ``sample``.

        Returns:
            float32 latents on the prior's device, scaled by ``vae.config.scaling_factor``.
        """
        self.load()
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be shaped (B, 3, H, W), got {tuple(images.shape)}")
        factor = self.vae_scale_factor
        if images.shape[-2] % factor or images.shape[-1] % factor:
            raise ValueError(f"image height and width must be multiples of {factor}, got {tuple(images.shape[-2:])}")
        pixels = (2 * images - 1).to(device=self.device, dtype=self.vae.dtype)
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.sample(generator) if sample else posterior.mean
        return latents.float() * self.vae.config.scaling_factor

    def decode(self, latents: Float[Tensor, "batch 4 h w"], with_grad: bool = False) -> Float[Tensor, "batch 3 H W"]:
        """Images in [0, 1] (float32, prior's device) of latents; no autograd unless ``with_grad``."""
        self.load()
        with torch.set_grad_enabled(with_grad and torch.is_grad_enabled()):
            scaled = (latents / self.vae.config.scaling_factor).to(device=self.device, dtype=self.vae.dtype)
            images = self.vae.decode(scaled).sample
            return (images.float() / 2 + 0.5).clamp(0, 1)

    # ------------------------------------------------------------------- UNet

    def _unet_output(self, x_t: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        if self.config.channels_last:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return self.unet(x_t, t, encoder_hidden_states=embeddings).sample

    def _prepare(self, x_t: Tensor, t: Tensor | int, cond: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        self.load()
        batch_size = x_t.shape[0]
        if cond.shape[0] != batch_size:
            raise ValueError(f"cond needs one embedding per item ({batch_size}), got shape {tuple(cond.shape)}")
        t = torch.as_tensor(t, device=self.device).long().reshape(-1).expand(batch_size)
        return (
            x_t.to(device=self.device, dtype=self.dtype),
            t,
            cond.to(device=self.device, dtype=self.dtype),
        )

    def _to_epsilon(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """float32 epsilon from the UNet's output: eps = sqrt(abar) v + sqrt(1 - abar) x_t for v-prediction."""
        output = output.float()
        if self.prediction_type == "epsilon":
            return output
        if self.prediction_type != "v_prediction":
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} (need epsilon or v_prediction)")
        abar = self._alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = x_t.to(device=output.device, dtype=torch.float64)
        return (abar.sqrt() * output + (1 - abar).sqrt() * x_t).float()

    @torch.no_grad()
    def predict_noise(
        self,
        x_t: Float[Tensor, "batch 4 h w"],
        t: Int[Tensor, "batch"],
        cond: Float[Tensor, "batch 77 dim"],
        guidance_scale: float,
    ) -> Float[Tensor, "batch 4 h w"]:
        """Classifier-free guided noise e_u + w (e_c - e_u) in ONE UNet call of batch 2B, float32.

        ``cond`` holds one conditional embedding per item (for PDS: [tgt; src], so one call of batch
        4 per view); the unconditional embedding is added here.
        """
        validate_guidance_scale(guidance_scale)
        x_in, t, cond = self._prepare(x_t, t, cond)
        batch_size = x_in.shape[0]
        uncond = self.unconditional_embedding.to(self.dtype).expand(batch_size, -1, -1)
        output = self._unet_output(torch.cat([x_in, x_in]), torch.cat([t, t]), torch.cat([uncond, cond]))
        e_uncond, e_cond = output.float().chunk(2)
        guided = e_uncond + guidance_scale * (e_cond - e_uncond)
        return self._to_epsilon(guided, x_t, t)

    @torch.no_grad()
    def predict_noise_reference(
        self,
        x_t: Float[Tensor, "batch 4 h w"],
        t: Int[Tensor, "batch"],
        cond: Float[Tensor, "batch 77 dim"],
        guidance_scale: float,
    ) -> Float[Tensor, "batch 4 h w"]:
        """The authors' call pattern, for tests: one UNet call per item, batch 2 ([cond; uncond]).

        Guidance is combined in the UNet's dtype as they do, e_u + w (e_c - e_u), then cast to float32.
        """
        validate_guidance_scale(guidance_scale)
        x_in, t, cond = self._prepare(x_t, t, cond)
        uncond = self.unconditional_embedding.to(self.dtype)
        predictions = []
        for i in range(x_in.shape[0]):
            item = x_in[i : i + 1]
            output = self._unet_output(
                torch.cat([item, item]), torch.cat([t[i : i + 1]] * 2), torch.cat([cond[i : i + 1], uncond])
            )
            e_cond, e_uncond = output.chunk(2)
            predictions.append(e_uncond + guidance_scale * (e_cond - e_uncond))
        return self._to_epsilon(torch.cat(predictions), x_t, t)

    def eps_fn(self, guidance_scale: float) -> EpsFn:
        """Guided noise predictor for :func:`pds_nerfstudio.guidance.guidance_gradient` and ``sdedit``.

        The returned predictions are cast to the input's dtype and device.
        """
        validate_guidance_scale(guidance_scale)

        predict = self.predict_noise if self.config.batched_guidance else self.predict_noise_reference

        def eps(x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
            return predict(x_t, t, cond, guidance_scale).to(device=x_t.device, dtype=x_t.dtype)

        return eps
