"""The diffusion prior that the guidance maths queries: Stable Diffusion through diffusers (stable_diffusion.py),
its hub helpers (hub.py), LoRA weights (lora.py) and DreamBooth-LoRA personalisation (dreambooth.py)."""
