"""Bearer API keys -> tenants, checked in constant time, and the per-tenant queue limit.

Keys come from the app config: the single-key mode (`api_key_env`, or a literal `api_key`) is tenant "default";
`api_keys` entries map a key (its SHA-256, or an environment variable holding it) to a named tenant. Only digests
are kept in memory. A presented key is hashed and its digest compared with every configured digest by
`hmac.compare_digest`, all of them each time, so neither the comparison nor the number of comparisons depends on
how much of a key was right or which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from .config import AppConfig
from .errors import APIError, rate_limited, unauthorized
from .store import DEFAULT_TENANT

_HOW = "send 'Authorization: Bearer <key>' (openai: api_key=...)"


@dataclass(frozen=True)
class _Key:
    digest: bytes
    tenant: str


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _configured_keys(config: AppConfig) -> list[_Key]:
    """Every configured key as a digest, environment variables read now (an empty one is a config error)."""
    keys = []
    single = config.resolved_api_key()
    if single is not None:
        keys.append(_Key(_digest(single), DEFAULT_TENANT))
    for entry in config.api_keys:
        if entry.key_sha256 is not None:
            keys.append(_Key(bytes.fromhex(entry.key_sha256), entry.tenant))
            continue
        value = os.environ.get(entry.key_env or "", "")
        if not value:
            raise ValueError(
                f"api_keys: tenant {entry.tenant!r} reads its key from {entry.key_env!r}, which is empty on this "
                "node; set it (e.g. from a Kubernetes secret) or give key_sha256 instead"
            )
        keys.append(_Key(_digest(value), entry.tenant))
    tenants_by_digest: dict[bytes, str] = {}
    for key in keys:
        if tenants_by_digest.setdefault(key.digest, key.tenant) != key.tenant:
            first = tenants_by_digest[key.digest]
            raise ValueError(f"one key is configured for two tenants ({first!r}, {key.tenant!r})")
    return keys


class Authenticator:
    r"""
    Who is calling: `tenant_for(authorization_header)` gives the tenant of a bearer key.

    Args:
        config: The app config; its keys are read (and environment variables resolved) once, here.
    """

    def __init__(self, config: AppConfig) -> None:
        self._keys = tuple(_configured_keys(config))
        self._limits = {e.tenant: e.max_queued_jobs for e in config.api_keys if e.max_queued_jobs is not None}
        self._retry_after_s = config.queue.retry_after_s

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant_for(self, authorization: str | None) -> str | None:
        """The tenant whose key the `Authorization` header carries; None when auth is off. Raises a 401
        `APIError` (`serve_app.errors.unauthorized`) for a missing, malformed or unknown key."""
        if not self._keys:
            return None
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise unauthorized(f"missing API key: {_HOW}")
        presented = _digest(token)
        tenant = None
        for key in self._keys:  # every key, every time: no early exit on a match or a mismatch
            if hmac.compare_digest(presented, key.digest) and tenant is None:
                tenant = key.tenant
        if tenant is None:
            raise unauthorized(f"wrong API key: {_HOW}")
        return tenant

    def max_queued_jobs(self, tenant: str | None) -> int | None:
        return None if tenant is None else self._limits.get(tenant)

    def check_queued(self, tenant: str | None, queued: int) -> None:
        """Raise the 429 of `tenant_queue_full` when `tenant` already has its limit of jobs waiting or running."""
        limit = self.max_queued_jobs(tenant)
        if limit is not None and queued >= limit:
            raise tenant_queue_full(tenant or DEFAULT_TENANT, queued, limit, self._retry_after_s)


def tenant_queue_full(tenant: str, queued: int, limit: int, retry_after_s: int) -> APIError:
    """A tenant over its `max_queued_jobs`: OpenAI's rate-limit shape, naming the limit, with Retry-After."""
    return rate_limited(
        f"tenant {tenant!r} has {queued} jobs waiting or running, the limit max_queued_jobs={limit} of its API key; "
        f"retry after {retry_after_s} s, when some have finished (no job was created for this request)",
        retry_after_s,
    )
