"""Which diffusers transformer a served model runs, known without loading it (torch-free): the embedded models by
name, a saved pipeline directory by its `model_index.json`. The app builder uses it to refuse a parallel setting
the family cannot run (`pab.parallel.support`) when the server is configured, instead of failing replicas."""

from __future__ import annotations

import json
from pathlib import Path

from pab.adapters import ADAPTERS, ModelAdapter

EMBEDDED_TRANSFORMERS: dict[str, str] = {
    "tiny-latte": "LatteTransformer3DModel",
    "tiny-cogvideox": "CogVideoXTransformer3DModel",
    "tiny-cogvideox-i2v": "CogVideoXTransformer3DModel",
    "tiny-wan": "WanTransformer3DModel",
    "tiny-wan22": "WanTransformer3DModel",
    "tiny-wan-i2v": "WanTransformer3DModel",
    "tiny-hunyuan": "HunyuanVideoTransformer3DModel",
    "tiny-allegro": "AllegroTransformer3DModel",
    "tiny-mochi": "MochiTransformer3DModel",
    "tiny-ltx": "LTXVideoTransformer3DModel",
    "tiny-ltx-i2v": "LTXVideoTransformer3DModel",
    "tiny-shapes": "LatteTransformer3DModel",
}
"""`pab.runtime.models.registry.EMBEDDED_MODELS` -> their transformer class (tests/pab/test_tiny_models.py checks)."""


def transformer_class(model: str) -> str | None:
    """The transformer class `model` (an embedded name or a saved pipeline directory) runs; None when unknown
    without loading it (a hub id)."""
    if model in EMBEDDED_TRANSFORMERS:
        return EMBEDDED_TRANSFORMERS[model]
    index = Path(model) / "model_index.json"
    try:
        entry = json.loads(index.read_text()).get("transformer")
    except (OSError, ValueError):
        return None
    return str(entry[1]) if isinstance(entry, list) and len(entry) == 2 else None


def model_adapter(model: str) -> ModelAdapter | None:
    """The PAB adapter of the family `model` belongs to, or None when unknown without loading it."""
    cls = transformer_class(model)
    return next((a for a in ADAPTERS.values() if cls in a.transformer_classes), None)
