"""`pab profile`, `pab calibrate`, `pab eval` (defined in `pab.runtime.tools.cli`)."""

from pab.runtime.tools.cli import register

__all__ = ["register"]
