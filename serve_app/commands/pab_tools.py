"""`pab profile`, `pab calibrate`, `pab eval` (defined in `pab.cli_tools`)."""

from pab.cli_tools import register

__all__ = ["register"]
