import pytest

from pab.config import PABConfigError
from pab.presets import PRESET_NAMES, REFERENCE_DEFAULTS, get_preset


def test_pyramids_use_the_models_reference_windows():
    cfg = get_preset("PAB-246", model="opensora")
    assert (cfg.spatial.range, cfg.temporal.range, cfg.cross.range) == (2, 4, 6)
    assert cfg.spatial.window == cfg.temporal.window == cfg.cross.window == (450.0, 930.0)
    latte = get_preset("PAB-579", model="latte")
    assert (latte.spatial.range, latte.temporal.range, latte.cross.range) == (5, 7, 9)
    assert latte.spatial.window == (100.0, 800.0)
    assert get_preset("PAB-357", model="wan").cross.window == (100.0, 850.0)  # wan -> full-3D + cross reference


def test_reference_defaults_match_the_paper():
    latte = get_preset("reference", model="latte")
    assert (latte.spatial.range, latte.temporal.range, latte.cross.range) == (2, 3, 6)
    assert latte.mlp.timesteps == (720.0, 640.0, 560.0, 480.0, 400.0) and latte.mlp.blocks == (0, 1, 2, 3, 4)
    plan = REFERENCE_DEFAULTS["opensora-plan-v1.1"].mlp
    assert plan.timesteps[0] == 738 and plan.timesteps[-1] == 426 and len(plan.timesteps) == 14
    cog = get_preset("reference", model="cogvideox")
    assert cog.spatial.range == 2 and cog.temporal is None and cog.cross is None


def test_mlp_suffix_and_errors():
    assert get_preset("PAB-246+mlp", model="latte").mlp == REFERENCE_DEFAULTS["latte"].mlp
    with pytest.raises(PABConfigError, match="no MLP"):
        get_preset("PAB-246+mlp", model="cogvideox")
    with pytest.raises(PABConfigError, match="unknown preset 'PAB-999'"):
        get_preset("PAB-999")
    assert not get_preset("none").enabled
    assert set(PRESET_NAMES) >= {"none", "PAB-246", "PAB-357", "PAB-579", "reference"}
