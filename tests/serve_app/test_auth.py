"""API keys -> tenants (serve_app/auth.py and the `api_keys` config): single-key mode, hashed and environment keys,
constant-time comparison against every key, and the per-tenant queue limit's 429."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pydantic import ValidationError

from serve_app import auth
from serve_app.auth import Authenticator
from serve_app.config import AppConfig
from serve_app.errors import APIError


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def tenants(monkeypatch) -> Authenticator:
    monkeypatch.setenv("PAB_TEST_SINGLE", "sk-single")
    monkeypatch.setenv("PAB_TEST_BOB", "sk-bob")
    return Authenticator(AppConfig(api_key_env="PAB_TEST_SINGLE", api_keys=[
        {"tenant": "alice", "key_sha256": _sha("sk-alice"), "max_queued_jobs": 2},
        {"tenant": "alice", "key_sha256": _sha("sk-alice-rotated").upper(), "max_queued_jobs": 2},
        {"tenant": "bob", "key_env": "PAB_TEST_BOB"},
    ]))


def test_auth_off_without_keys_accepts_anything():
    authenticator = Authenticator(AppConfig())
    assert not authenticator.enabled and not AppConfig().auth_configured
    assert authenticator.tenant_for(None) is None and authenticator.tenant_for("Bearer whatever") is None


def test_keys_map_to_their_tenants(tenants):
    assert tenants.enabled
    assert tenants.tenant_for("Bearer sk-single") == "default"  # the single-key mode keeps working
    assert tenants.tenant_for("Bearer sk-alice") == "alice"
    assert tenants.tenant_for("bearer  sk-alice-rotated ") == "alice"  # scheme is case-insensitive
    assert tenants.tenant_for("Bearer sk-bob") == "bob"
    assert AppConfig(api_key="literal").auth_configured
    assert Authenticator(AppConfig(api_key="literal")).tenant_for("Bearer literal") == "default"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic sk-alice", "sk-alice", "Bearer sk-alic",
                                    "Bearer sk-alice2", "Bearer " + _sha("sk-alice")])
def test_missing_malformed_or_wrong_keys_get_401(tenants, header):
    with pytest.raises(APIError) as info:
        tenants.tenant_for(header)
    error = info.value
    assert (error.status_code, error.type, error.code) == (401, "authentication_error", "invalid_api_key")
    assert "Authorization: Bearer" in error.message and "alice" not in error.message


def test_every_key_is_compared_in_constant_time_even_after_a_match(tenants, monkeypatch):
    compared = []
    real = hmac.compare_digest

    def counting(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for header in ("Bearer sk-single", "Bearer sk-bob", "Bearer nobody's"):
        compared.clear()
        try:
            tenants.tenant_for(header)
        except APIError:
            pass
        # four keys, four comparisons, whichever matched; always of two 32-byte digests, never of the raw key
        assert compared == [(32, 32)] * 4, header


def test_an_empty_key_variable_or_a_shared_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("PAB_TEST_UNSET", raising=False)
    with pytest.raises(ValueError, match="PAB_TEST_UNSET"):
        Authenticator(AppConfig(api_keys=[{"tenant": "alice", "key_env": "PAB_TEST_UNSET"}]))
    monkeypatch.setenv("PAB_TEST_SHARED", "sk-same")
    with pytest.raises(ValueError, match="two tenants"):
        Authenticator(AppConfig(api_key="sk-same", api_keys=[{"tenant": "bob", "key_env": "PAB_TEST_SHARED"}]))


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"tenant": "alice"}, "exactly one of key_sha256 or key_env"),
        ({"tenant": "alice", "key_sha256": _sha("k"), "key_env": "X"}, "exactly one"),
        ({"tenant": "alice", "key_sha256": "abc"}, "key_sha256"),
        ({"tenant": "../etc", "key_env": "X"}, "tenant"),
        ({"tenant": "alice", "key_env": "X", "max_queued_jobs": 0}, "max_queued_jobs"),
        ({"tenant": "alice", "key": "sk-plain"}, "key"),
    ],
)
def test_bad_key_entries_name_the_field(entry, words):
    with pytest.raises(ValidationError, match=words):
        AppConfig(api_keys=[entry])


def test_one_tenant_one_limit_and_one_key_one_entry():
    with pytest.raises(ValidationError, match="different max_queued_jobs"):
        AppConfig(api_keys=[{"tenant": "a", "key_env": "X", "max_queued_jobs": 1},
                            {"tenant": "a", "key_env": "Y", "max_queued_jobs": 2}])
    with pytest.raises(ValidationError, match="same key_sha256"):
        AppConfig(api_keys=[{"tenant": "a", "key_sha256": _sha("k")}, {"tenant": "b", "key_sha256": _sha("k")}])


def test_a_tenant_at_its_queue_limit_gets_an_openai_shaped_429_naming_the_limit(tenants):
    assert tenants.max_queued_jobs("alice") == 2 and tenants.max_queued_jobs("bob") is None
    tenants.check_queued("alice", 1)
    tenants.check_queued("bob", 10_000)  # no per-tenant limit
    tenants.check_queued(None, 10_000)  # auth off
    with pytest.raises(APIError) as info:
        tenants.check_queued("alice", 2)
    error = info.value
    assert (error.status_code, error.type, error.code) == (429, "requests", "rate_limit_exceeded")
    assert "max_queued_jobs=2" in error.message and "'alice'" in error.message
    assert error.headers == {"Retry-After": str(AppConfig().queue.retry_after_s)}
    assert set(error.to_body()["error"]) == {"message", "type", "param", "code"}
