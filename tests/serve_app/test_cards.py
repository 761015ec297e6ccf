"""The ingress reads the served model's card from the store (`serve_app.cards.CardCache`), and does not keep one
from an earlier deployment."""

from __future__ import annotations

import time
import pytest

from pab.runtime.request.card import ModelCard
from serve_app.cards import CardCache
from serve_app.config import AppConfig
from serve_app.errors import APIError
from serve_app.store import JobStore


def _card(created: int, version: str) -> str:
    return ModelCard(name="m", adapter=None, defaults={"v": version}, geometry={}, created=created).model_dump_json()


def test_a_card_older_than_the_ingress_is_used_but_read_again_until_a_current_one_appears(tmp_path) -> None:
    config = AppConfig(storage={"url": str(tmp_path)})
    store = JobStore(config.storage.url)
    started = int(time.time())
    cards = CardCache(store, config.card_key(), config.model_name, started_at=started)
    with pytest.raises(APIError, match="still loading"):
        cards.get()

    store.put_card(config.card_key(), _card(started - 3600, "previous deployment"))
    assert cards.get().defaults == {"v": "previous deployment"}
    store.put_card(config.card_key(), _card(started, "this deployment"))
    assert cards.get().defaults == {"v": "this deployment"}  # read again: the cached one was stale

    store.put_card(config.card_key(), _card(started + 1, "a replaced generator"))
    assert cards.get().defaults == {"v": "this deployment"}  # a current card is kept for CARD_REFRESH_S
    cards._read_at -= 3600
    assert cards.get().defaults == {"v": "a replaced generator"}
