"""docs/MODELS.md's tables say what the code does: kinds found on the real transformers, splits, CFG modes, presets."""

from __future__ import annotations

import re

import diffusers
import pytest

from pab.adapters import ADAPTERS, adapter_for
from pab.config import ATTENTION_KINDS
from pab.parallel import apply as parallel_apply
from pab.parallel import support as parallel_support
from pab.presets import REFERENCE_DEFAULTS
from pab.runtime.models.registry import RANDOM_MODELS
from tests.conftest import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "MODELS.md").read_text()


def _table(heading: str) -> list[dict[str, str]]:
    """The first Markdown table after `heading`, as rows keyed by the header cells."""
    lines = DOC.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, row)) for row in body]


def _code(cell: str) -> str:
    return re.sub(r"`", "", cell)


FAMILIES = _table("## Families")
PRESETS = _table("## PAB presets per family")


def test_every_adapter_and_tiny_model_has_a_row() -> None:
    assert {_code(r["adapter"]) for r in FAMILIES} == set(ADAPTERS)
    assert {_code(r["tiny model"]) for r in FAMILIES} == set(RANDOM_MODELS)
    assert {_code(r["adapter"]) for r in PRESETS} == set(ADAPTERS)


@pytest.mark.parametrize("row", FAMILIES, ids=[r["family"] for r in FAMILIES])
def test_family_row_matches_the_code(row: dict[str, str]) -> None:
    pipe = RANDOM_MODELS[_code(row["tiny model"])].build()
    adapter = adapter_for(pipe.transformer)
    assert adapter.name == _code(row["adapter"])
    kinds = {kind for _, kind, _, _ in adapter.iter_modules(pipe.transformer)}
    assert {k.strip() for k in row["PAB kinds"].split(",")} == kinds
    sp = row["sequence parallel"]
    installer = parallel_apply._INSTALLERS.get(adapter.name)
    assert (sp == "none") == (adapter.name in parallel_support.NO_SEQUENCE_PARALLEL) == (installer is None)
    assert sp.startswith("DSP") == (adapter.sp_strategy == "dsp")
    assert ("diffusers CP" in sp) == (installer is parallel_apply._install_diffusers_cp)
    cfg = {"batched": not adapter.two_pass_cfg, "two-pass": adapter.two_pass_cfg, "distilled": adapter.two_pass_cfg}
    assert cfg[row["CFG"]] and (row["CFG"] == "distilled") == (adapter.name in parallel_support.NO_CFG_PARALLEL)


@pytest.mark.parametrize("row", FAMILIES, ids=[r["family"] for r in FAMILIES])
def test_image_to_video_column_names_real_pipelines(row: dict[str, str]) -> None:
    named = re.findall(r"`(\w+)`", row["I2V pipeline in diffusers"])
    if row["I2V pipeline in diffusers"] == "no":
        family = ADAPTERS[_code(row["adapter"])].pipeline_class.removesuffix("Pipeline")
        assert not [n for n in dir(diffusers) if n.startswith(family) and ("ImageToVideo" in n or "Condition" in n)]
    else:
        assert named and all(isinstance(getattr(diffusers, n, None), type) for n in named)


@pytest.mark.parametrize("row", PRESETS, ids=[r["adapter"] for r in PRESETS])
def test_preset_row_matches_the_reference_table(row: dict[str, str]) -> None:
    adapter = ADAPTERS[_code(row["adapter"])]
    assert _code(row["reference"]) == adapter.reference
    reference = REFERENCE_DEFAULTS[adapter.reference]
    rules = [reference.rule_for(kind) for kind in ATTENTION_KINDS]
    windows = {r.window for r in rules if r is not None}
    assert len(windows) == 1 and row["window"] == "({:g}, {:g})".format(*windows.pop())
    assert row["ranges (spatial / temporal / cross)"] == " / ".join("-" if r is None else str(r.range) for r in rules)
    mlp = reference.mlp
    if mlp is None:
        assert row["MLP broadcast"] == "none"
    else:
        cell = row["MLP broadcast"]
        assert f"blocks {min(mlp.blocks)}-{max(mlp.blocks)}" in cell and f"range {mlp.range}" in cell
        assert f"{max(mlp.timesteps):g}" in cell and f"{min(mlp.timesteps):g}" in cell
    tuned = row["source"].startswith("paper") and adapter.reference == adapter.name
    assert row["tuned"] == ("yes" if tuned else "untuned")
