"""Work-arounds for diffusers pipelines that break in an environment this project supports.

diffusers 0.42's `WanImageToVideoPipeline` cleans prompts with `ftfy.fix_text` whether or not ftfy is installed (its
text-to-video sibling, `WanPipeline`, skips the call when ftfy is missing): without ftfy every call raises
`NameError`. `ensure_prompt_cleaning` gives such a module the same no-op `WanPipeline` applies, so both read a
prompt identically; with ftfy installed nothing changes.
"""

from __future__ import annotations

import importlib
from types import ModuleType, SimpleNamespace

_UNGUARDED_FTFY = ("diffusers.pipelines.wan.pipeline_wan_i2v",)


def ensure_prompt_cleaning() -> list[ModuleType]:
    """Give each pipeline module that calls ftfy unguarded a pass-through `ftfy` when the package is missing;
    returns the modules changed."""
    changed = []
    for name in _UNGUARDED_FTFY:
        module = importlib.import_module(name)
        if not hasattr(module, "ftfy"):
            module.ftfy = SimpleNamespace(fix_text=lambda text: text)
            changed.append(module)
    return changed
