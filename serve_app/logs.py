"""What the serving processes log, so a console shows what a person needs: start-up, job ends, problems.

One level (`AppConfig.log_level`, `pab serve --log-level`) sets every process:

- the replicas, through Serve's per-deployment `logging_config` (`serve_logging_config`): their own log lines at
  that level, and the access log (a line per HTTP request) only at `debug`;
- Serve's controller and HTTP proxy (`serve.start(logging_config=...)` in `pab serve`), the same way;
- the worker processes' libraries (`quiet_libraries`, before torch loads): torch's C++ warnings (c10d's hostname
  lookups in a loopback-only namespace) only at `debug`;
- the `pab serve` process itself (`quiet_driver`): Ray's and Serve's client-side INFO lines.

Torch-free and Ray-free: the builder, the workers and the CLI import it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

LEVELS: dict[str, int] = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
                          "error": logging.ERROR}


def level_name(level: str) -> str:
    """The upper-case name Python's logging and Serve take."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {list(LEVELS)}, got {level!r}")
    return logging.getLevelName(LEVELS[level])


def serve_logging_config(level: str) -> dict[str, Any]:
    """Serve's `LoggingConfig` (as a dict) for a deployment, its controller or its proxy at `level`."""
    return {"log_level": level_name(level), "enable_access_log": level == "debug"}


def quiet_libraries(level: str) -> None:
    """In a worker process, before torch is imported: torch's C++ warnings only at `debug` (c10d warns on every
    rank that "the hostname of the client socket cannot be retrieved" where no name resolves, e.g. loopback-only)."""
    if level != "debug":
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # read once, when torch's C++ library loads


def quiet_driver(level: str) -> None:
    """In the process that starts Serve: its client-side loggers at `level` (Serve says "Started Serve", "Connecting
    to existing Serve app" and "Application ... is ready" at INFO)."""
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(LEVELS[level])
