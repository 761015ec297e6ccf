"""docs/MODELS.md's tables say what the code does: kinds found on the real transformers, splits, CFG modes, presets."""

from __future__ import annotations

import inspect
import re
from typing import Any

import diffusers
import pytest

from pab.adapters import ADAPTERS, adapter_for
from pab.config import ATTENTION_KINDS
from pab.parallel import apply as parallel_apply
from pab.parallel import support as parallel_support
from pab.presets import REFERENCE_DEFAULTS
from pab.runtime.models.registry import EMBEDDED_MODELS, RANDOM_MODELS
from pab.runtime.pipelines import VideoGenerator, load_pipeline
from tests.conftest import REPO_ROOT

DOC = (REPO_ROOT / "docs" / "MODELS.md").read_text()


def _table(heading: str, doc: str = DOC) -> list[dict[str, str]]:
    """The first Markdown table after `heading`, as rows keyed by the header cells."""
    lines = doc.split(heading, 1)[1].splitlines()
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
README_FAMILIES = _table("## Model families", (REPO_ROOT / "README.md").read_text())
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
    assert type(pipe).__name__ == _code(row["pipeline"])
    check_serving_cells(row, pipe, adapter)


def check_serving_cells(row: dict[str, str], pipe: Any, adapter: Any) -> None:
    """PAB kinds, sequence parallel, CFG, input_reference and remix cells of a table row, against the code."""
    kinds = {kind for _, kind, _, _ in adapter.iter_modules(pipe.transformer)}
    assert {k.strip() for k in row["PAB kinds"].split(",")} == kinds
    generator = VideoGenerator(pipe)
    reference = "required" if generator.reference_required else "optional" if generator.image_to_video else "no"
    assert row["input_reference"] == reference
    takes_video = {"video", "strength"} <= set(inspect.signature(pipe.__call__).parameters)
    assert (row["remix"] != "no") == takes_video
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


def test_readme_model_table_covers_every_embedded_model() -> None:
    # a model may sit in both columns of its own row (tiny-shapes conditions on an image only when given one)
    named = [m for row in README_FAMILIES
             for m in dict.fromkeys(re.findall(r"`([\w-]+)`", row["text-to-video"] + row["image-to-video"]))]
    assert sorted(named) == sorted(EMBEDDED_MODELS)


@pytest.mark.parametrize("row", README_FAMILIES, ids=[r["family"] for r in README_FAMILIES])
def test_readme_model_row_matches_the_code(row: dict[str, str]) -> None:
    """Per family: PAB kinds, split, CFG mode, image-to-video and remix as the served models do them."""
    text = re.findall(r"`([\w-]+)`", row["text-to-video"])
    image = re.findall(r"`([\w-]+)`", row["image-to-video"])
    assert image or row["image-to-video"] == "no"
    remix = []
    for model in text + image:
        generator = VideoGenerator(load_pipeline(model))
        assert generator.image_to_video == (model in image), model
        assert generator.reference_required == (model in image and model not in text), model
        remix.append({"video", "strength"} <= set(inspect.signature(generator.pipeline.__call__).parameters))
        adapter = adapter_for(generator.pipeline.transformer)
        kinds = {kind for _, kind, _, _ in adapter.iter_modules(generator.pipeline.transformer)}
        assert {k.strip() for k in row["PAB kinds"].split(",")} == kinds, model
        sp, installer = row["sequence parallel"], parallel_apply._INSTALLERS.get(adapter.name)
        assert (sp == "none") == (adapter.name in parallel_support.NO_SEQUENCE_PARALLEL) == (installer is None)
        assert (sp == "DSP") == (adapter.sp_strategy == "dsp")
        assert ("diffusers CP" in sp) == (installer is parallel_apply._install_diffusers_cp)
        assert row["CFG"] == ("batched" if not adapter.two_pass_cfg else
                              "distilled" if adapter.name in parallel_support.NO_CFG_PARALLEL else "two-pass")
    assert (row["remix"] != "no") == any(remix)
