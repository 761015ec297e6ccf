"""The served model's card as the ingress sees it: read from the job store, where generator replicas publish it."""

from __future__ import annotations

import time

from pab.runtime.request.card import ModelCard

from .errors import APIError
from .store import JobStore

CARD_REFRESH_S = 5.0


class CardCache:
    r"""
    The card of one deployment (`AppConfig.card_key`), kept for `CARD_REFRESH_S`.

    A card older than the reader (`started_at`) may come from an earlier deployment with other code or weights (the
    store outlives deployments), so it is used but read again on the next request until a newer one appears; a
    current card is re-read every `CARD_REFRESH_S`, so a replaced generator's card is seen soon too.
    """

    def __init__(self, store: JobStore, key: str, model_name: str, started_at: int) -> None:
        self._store, self._key, self._model_name, self._started_at = store, key, model_name, started_at
        self._card: ModelCard | None = None
        self._read_at = 0.0

    def get(self) -> ModelCard:
        """The card, or a 503 while no generator replica has published one."""
        now = time.time()
        if self._card is None or self._card.created < self._started_at or now - self._read_at > CARD_REFRESH_S:
            raw = self._store.card(self._key)
            if raw is not None:
                self._card, self._read_at = ModelCard.model_validate_json(raw), now
        if self._card is None:
            raise APIError(503, f"model {self._model_name!r} is still loading; retry in a few seconds",
                           type="server_error", code="model_loading")
        return self._card
