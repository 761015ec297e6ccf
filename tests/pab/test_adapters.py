import pytest
import torch

from pab.adapters import ADAPTERS, UnsupportedModelError, adapter_for, generic_adapter
from pab.runtime.models.tiny import tiny_cogvideox_transformer, tiny_latte_transformer, tiny_wan_transformer


def _kinds(adapter, transformer):
    out = {}
    for name, kind, block, _ in adapter.iter_modules(transformer):
        out[name] = (kind, block)
    return out


def test_latte_temporal_attention_is_temporal():
    tr = tiny_latte_transformer()
    kinds = _kinds(adapter_for(tr), tr)
    assert kinds["temporal_transformer_blocks.1.attn1"] == ("temporal", 1)
    assert kinds["transformer_blocks.1.attn1"] == ("spatial", 1)
    assert kinds["transformer_blocks.0.attn2"] == ("cross", 0)
    assert kinds["temporal_transformer_blocks.0.ff"] == ("mlp", 0)
    assert not any(k.endswith("to_q") for k in kinds)


def test_cogvideox_and_wan_mappings():
    cog = tiny_cogvideox_transformer()
    assert {k for k, _ in _kinds(adapter_for(cog), cog).values()} == {"spatial", "mlp"}
    wan = tiny_wan_transformer()
    adapter = adapter_for(wan)
    assert adapter.two_pass_cfg and adapter.name == "wan"
    kinds = _kinds(adapter, wan)
    assert kinds["blocks.0.attn1"] == ("spatial", 0) and kinds["blocks.0.attn2"] == ("cross", 0)


def test_unknown_model_lists_supported_ones_and_generic_opt_in():
    with pytest.raises(UnsupportedModelError) as err:
        adapter_for(torch.nn.Linear(2, 2))
    for name in ("latte", "cogvideox", "wan", "hunyuanvideo", "allegro", "mochi", "ltx-video"):
        assert name in str(err.value)
    assert "generic_adapter" in str(err.value)
    adapter = generic_adapter(spatial=[r"layers\.(?P<block>\d+)"])
    model = torch.nn.Sequential()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
    assert _kinds(adapter, model) == {"layers.0": ("spatial", 0)}
    with pytest.raises(UnsupportedModelError):
        generic_adapter()


def test_every_adapter_names_a_reference_default():
    from pab.presets import REFERENCE_DEFAULTS

    for adapter in ADAPTERS.values():
        assert adapter.reference in REFERENCE_DEFAULTS
