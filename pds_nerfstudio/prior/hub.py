"""How a prior's model id is read: a local folder or a Hugging Face hub id, and whether the hub is offline.
Shared by the prior and its LoRA (no torch, no diffusers)."""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_VALUES = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of HF_HUB_OFFLINE


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks huggingface_hub for offline mode."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in OFFLINE_VALUES


def looks_like_local_path(model_id: str) -> bool:
    """A hub id is "name" or "org/name"; anything existing, absolute, relative or deeper is a folder."""
    expanded = Path(model_id).expanduser()
    return (
        expanded.exists()
        or model_id.startswith(("/", ".", "~"))
        or model_id.count("/") > 1
        or "\\" in model_id
    )
