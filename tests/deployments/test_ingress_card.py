"""The ingress reads the served model's card from the store, and does not keep one from an earlier deployment."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from deployments.ingress import VideoIngress
from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.model_card import ModelCard
from serve_app.store import JobStore

model_card = VideoIngress.func_or_class._model_card


def _card(created: int, version: str) -> str:
    return ModelCard(name="m", adapter=None, defaults={"v": version}, geometry={}, created=created).model_dump_json()


def test_a_card_older_than_the_ingress_is_used_but_read_again_until_a_current_one_appears(tmp_path) -> None:
    config = AppConfig(storage={"url": str(tmp_path)})
    store = JobStore(config.storage.url)
    started = int(time.time())
    ingress = SimpleNamespace(_store=store, _config=config, _card=None, _card_read_at=0.0, _started_at=started)
    with pytest.raises(APIError, match="still loading"):
        model_card(ingress)

    store.put_card(config.card_key(), _card(started - 3600, "previous deployment"))
    assert model_card(ingress).defaults == {"v": "previous deployment"}
    store.put_card(config.card_key(), _card(started, "this deployment"))
    assert model_card(ingress).defaults == {"v": "this deployment"}  # read again: the cached one was stale

    store.put_card(config.card_key(), _card(started + 1, "a replaced generator"))
    assert model_card(ingress).defaults == {"v": "this deployment"}  # a current card is kept for CARD_REFRESH_S
    ingress._card_read_at -= 3600
    assert model_card(ingress).defaults == {"v": "a replaced generator"}
