import pytest

from pab.config import BroadcastRule, MLPBroadcastRule, PABConfig, PABConfigError


def test_rule_is_the_papers_rule():
    rule = BroadcastRule(range=3, window=(100, 800))
    assert [rule.broadcasts(c, 500) for c in range(6)] == [False, True, True, False, True, True]
    assert not rule.broadcasts(1, 800) and not rule.broadcasts(1, 100)  # both bounds exclusive
    assert rule.broadcasts(1, 799.5) and rule.broadcasts(1, 100.5)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"range": 0}, "range"),
        ({"range": 2.5}, "range"),
        ({"range": True}, "range"),
        ({"window": (800, 100)}, "window"),
        ({"window": (-1, 100)}, "window"),
        ({"window": (0, 1001)}, "window"),
        ({"window": "abc"}, "window"),
    ],
)
def test_rule_validation_names_the_field(kwargs, field):
    with pytest.raises(PABConfigError, match=field):
        BroadcastRule(**kwargs)


def test_mlp_rule_validation_and_normalisation():
    rule = MLPBroadcastRule(blocks=(3, 1, 1), timesteps=(400, 720), range=2)
    assert rule.blocks == (1, 3) and rule.timesteps == (720.0, 400.0)
    with pytest.raises(PABConfigError, match="mlp.blocks"):
        MLPBroadcastRule(blocks=(-1,), timesteps=(500,))
    with pytest.raises(PABConfigError, match="mlp.timesteps"):
        MLPBroadcastRule(blocks=(0,), timesteps=(1500,))
    with pytest.raises(PABConfigError, match="mlp.range"):
        MLPBroadcastRule(blocks=(0,), timesteps=(500,), range=0)


def test_dict_round_trip_and_unknown_fields():
    cfg = PABConfig(
        spatial=BroadcastRule(2, (100, 800)),
        cross=BroadcastRule(6, (100, 800)),
        mlp=MLPBroadcastRule((0, 1), (700,), 2),
        name="mine",
    )
    assert PABConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(PABConfigError, match="spatail"):
        PABConfig.from_dict({"spatail": {"range": 2}})
    with pytest.raises(PABConfigError, match="cross.range"):
        PABConfig.from_dict({"cross": {"range": -2, "window": [1, 2]}})
    with pytest.raises(PABConfigError, match="rnage"):
        PABConfig.from_dict({"cross": {"rnage": 2}})


def test_enabled():
    assert not PABConfig.disabled().enabled
    assert not PABConfig(spatial=BroadcastRule(1, (0, 1000))).enabled
    assert PABConfig(spatial=BroadcastRule(2, (0, 1000))).enabled
