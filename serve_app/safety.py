"""Refuse to serve the API beyond loopback with auth off, unless the config says so on purpose.

`check_bind(host, config)` runs where a server starts: `pab serve` (before Ray starts) and `build_app` (with the host
Serve's HTTP proxy binds, `serve_http_host()`), so `serve run`, `serve deploy` and KubeRay are covered too.
"""

from __future__ import annotations

import ipaddress
import logging

from .config import AppConfig

logger = logging.getLogger("ray.serve")


class UnsafeBindError(ValueError):
    """HTTP would listen beyond loopback while no API key is configured."""


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; anything else (0.0.0.0, ::, a name, an interface address) may
    be reachable from other machines."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, config: AppConfig) -> None:
    """Raise `UnsafeBindError`, saying how to opt in, when `host` is not loopback and auth is off."""
    if is_loopback(host) or config.auth_configured:
        return
    if config.allow_unauthenticated_public:
        logger.warning("pab: serving HTTP on %s with no API key (allow_unauthenticated_public: true)", host)
        return
    raise UnsafeBindError(
        f"refusing to serve HTTP on {host!r} with auth off: anyone who can reach this address could create, read "
        "and delete jobs. Configure a key (api_key_env=NAME with the key in that environment variable, or "
        "api_keys: [{tenant, key_sha256 | key_env}]), bind 127.0.0.1 instead, or, on a network you trust, set "
        "allow_unauthenticated_public: true"
    )


def serve_http_host() -> str:
    """The host Serve's HTTP proxy binds: the running Serve controller's `http_options.host` (`pab serve`,
    `serve run CONFIG`, `serve deploy`, KubeRay build the app with Serve started), else Serve's default: what a
    proxy started later without `http_options` binds (`serve run module:app` builds before it starts Serve)."""
    import ray
    from ray.serve.config import HTTPOptions

    if ray.is_initialized():
        from ray.serve.context import _get_global_client  # no public getter for the proxy's host in Ray 2.60

        client = _get_global_client(raise_if_no_controller_running=False)
        if client is not None:
            return client.http_config.host
    return HTTPOptions().host
