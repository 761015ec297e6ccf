"""Serving processes that only route and validate requests must not import torch or diffusers.

A generator replica that starts during a scale-up imports its deployment module before it can start its workers, and
torch + diffusers cost several seconds of CPU there (measured in bench/BENCHMARKS_ops.md).
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT

LIGHT_MODULES = ("deployments.generator", "deployments.ingress", "deployments.workers", "deployments.engine",
                 "deployments.runner", "deployments.dispatch", "serve_app.entrypoints.builder", "serve_app.videos",
                 "pab.runtime.request.resolve", "pab.runtime.request.card", "pab.runtime.stats", "pab.config",
                 "pab.presets", "pab.parallel.layout")


def test_serving_modules_do_not_import_torch_or_diffusers():
    code = (
        f"import sys, importlib\n"
        f"for name in {LIGHT_MODULES!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_pab_names_still_resolve_lazily():
    import pab
    import pab.runtime.pipelines

    assert pab.apply_pab is pab.hooks.apply_pab and pab.get_preset("PAB-246", "latte") is not None
    assert pab.runtime.pipelines.GenerationParams is pab.runtime.request.params.GenerationParams  # one class, re-exported
    assert set(pab.__all__) <= set(dir(pab))
