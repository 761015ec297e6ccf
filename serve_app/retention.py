"""The periodic sweep that removes expired jobs from the store (`JobStore.sweep`), for an ingress replica's loop.

Every ingress replica may run one: sweeps are idempotent (a job another replica removed first is skipped), and each
reads only jobs old enough to have expired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .store import JobStore

logger = logging.getLogger("ray.serve")


class RetentionSweeper:
    r"""
    Removes expired jobs every `period_s` seconds.

    Args:
        store: The job store; its `retention_s` says when a finished job expires (None: the sweep removes nothing).
        period_s: Seconds between two sweeps.
        clock: Wall-clock time in seconds (tests pass their own).
    """

    def __init__(self, store: JobStore, period_s: float, clock: Callable[[], float] = time.time) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self._store, self._period_s, self._clock = store, period_s, clock
        self.removed_total = 0
        self.sweeps = 0

    def run_once(self) -> list[str]:
        """One sweep now; returns the ids removed."""
        removed = self._store.sweep(self._clock())
        self.sweeps += 1
        self.removed_total += len(removed)
        if removed:
            logger.info("pab: removed %d expired job(s) from the store", len(removed))
        return removed

    async def run(self) -> None:
        """Sweep forever (in a worker thread, so the event loop keeps serving); a failed sweep is logged and the
        next one runs on time. Cancel the task to stop."""
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                logger.warning("pab: the retention sweep failed; trying again in %g s", self._period_s, exc_info=True)
            await asyncio.sleep(self._period_s)
