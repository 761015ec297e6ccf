"""Pyramid Attention Broadcast for diffusers video transformers (torch + diffusers only; never imports ray).

The names below load on first use, so that `import pab.config` or `pab.runtime.request.params` (request validation in serving
processes) does not import torch and diffusers.
"""

from __future__ import annotations

from ._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ADAPTERS": ".adapters",
    "ModelAdapter": ".adapters",
    "UnsupportedModelError": ".adapters",
    "adapter_for": ".adapters",
    "generic_adapter": ".adapters",
    "get_adapter": ".adapters",
    "BroadcastRule": ".config",
    "MLPBroadcastRule": ".config",
    "PABConfig": ".config",
    "PABConfigError": ".config",
    "PABApplyError": ".hooks",
    "PABHandle": ".hooks",
    "apply_pab": ".hooks",
    "PRESET_NAMES": ".presets",
    "get_preset": ".presets",
    "PABStats": ".stats",
    "record_collective": ".stats",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
