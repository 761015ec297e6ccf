"""Work-arounds for diffusers pipelines that break in an environment this project supports.

diffusers 0.42's `WanImageToVideoPipeline` cleans prompts with `ftfy.fix_text` whether or not ftfy is installed (its
text-to-video sibling, `WanPipeline`, skips the call when ftfy is missing): without ftfy every call raises
`NameError`. `ensure_prompt_cleaning` gives such a module the same no-op `WanPipeline` applies, so both read a
prompt identically; with ftfy installed nothing changes. Importing that module makes transformers warn, once per
process, that torchvision is missing and it falls back to the PIL CLIP image processor (which is what it then uses,
correctly); the import runs with transformers' logging at error level so `pab generate` and the like stay quiet.
"""

from __future__ import annotations

import importlib
from types import ModuleType, SimpleNamespace

from transformers.utils import logging as hf_logging

_UNGUARDED_FTFY = ("diffusers.pipelines.wan.pipeline_wan_i2v",)


def ensure_prompt_cleaning() -> list[ModuleType]:
    """Give each pipeline module that calls ftfy unguarded a pass-through `ftfy` when the package is missing;
    returns the modules changed."""
    changed = []
    for name in _UNGUARDED_FTFY:
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            module = importlib.import_module(name)
        finally:
            hf_logging.set_verbosity(level)
        if not hasattr(module, "ftfy"):
            module.ftfy = SimpleNamespace(fix_text=lambda text: text)
            changed.append(module)
    return changed
