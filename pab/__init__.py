"""Pyramid Attention Broadcast for diffusers video transformers (torch + diffusers only; never imports ray)."""

from .adapters import ADAPTERS, ModelAdapter, UnsupportedModelError, adapter_for, generic_adapter, get_adapter
from .config import BroadcastRule, MLPBroadcastRule, PABConfig, PABConfigError
from .hooks import PABApplyError, PABHandle, apply_pab
from .presets import PRESET_NAMES, get_preset
from .stats import PABStats, record_collective

__all__ = [
    "ADAPTERS",
    "BroadcastRule",
    "MLPBroadcastRule",
    "ModelAdapter",
    "PABApplyError",
    "PABConfig",
    "PABConfigError",
    "PABHandle",
    "PABStats",
    "PRESET_NAMES",
    "UnsupportedModelError",
    "adapter_for",
    "apply_pab",
    "generic_adapter",
    "get_adapter",
    "get_preset",
    "record_collective",
]
