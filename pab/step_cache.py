"""Step-level broadcast: reuse or forecast the whole transformer output on the forwards a rule selects.

Where per-module PAB skips attention modules inside a forward, this skips the forward: on a selected step nothing
inside the transformer runs, so it works whatever the block layout (Latte's spatial and temporal blocks differ, which
is where block-output caches such as diffusers' FirstBlockCache and MagCache fail). The rule is a `BroadcastRule`
(`PABConfig.step`), counted per CFG pass over the forwards of one generation: the schedule depends only on the
timestep sequence, so every rank of a sequence-parallel group skips the same forwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import BroadcastRule
from .forecast import ForecastHistory
from .stats import OTHER_KIND, KindStats, PABStats


class SkippableModule(Protocol):
    """What the step cache needs of a per-module broadcast hook: its kind and what a computation of it would issue."""

    kind: str

    def skipped_collectives(self) -> list[tuple[str, int]]: ...


@dataclass
class _StepPass:
    counter: int = 0
    history: ForecastHistory | None = None
    comm_log: list[tuple[str, int]] = field(default_factory=list)  # "other" collectives of the last computed forward


class StepCache:
    """Per-pass counters and output histories of the step rule, for one generation at a time."""

    def __init__(self) -> None:
        self.passes: dict[str, _StepPass] = {}
        self.generation = -1

    def reset(self) -> None:
        self.passes.clear()

    def _pass(self, generation: int, branch: str, rule: BroadcastRule) -> _StepPass:
        if generation != self.generation:
            self.passes.clear()
            self.generation = generation
        ps = self.passes.get(branch)
        if ps is None:
            ps = self.passes[branch] = _StepPass(history=ForecastHistory(rule.forecast_order + 1))
        return ps

    def lookup(self, rule: BroadcastRule | None, generation: int, branch: str, timestep: float, stats: PABStats,
               modules: list[SkippableModule]) -> Any:
        """The output to return instead of running this forward, or None to run it. Books the stats either way."""
        if rule is None:
            return None
        ps = self._pass(generation, branch, rule)
        ps.counter += 1
        if not (len(ps.history) and rule.broadcasts(ps.counter - 1, timestep)):
            stats.step.calls += 1
            stats.step.computed += 1
            return None
        forecast = rule.forecast_order > 0 and len(ps.history) > 1
        _book_skip(stats.step, forecast)
        for module in modules:
            _book_skip(stats.kinds[module.kind], forecast)
            for op, nbytes in module.skipped_collectives():
                stats.book_skipped(module.kind, op, nbytes)
        for op, nbytes in ps.comm_log:
            stats.book_skipped(OTHER_KIND, op, nbytes)
        return ps.history.predict(timestep, rule.forecast_order)

    def record(self, rule: BroadcastRule | None, branch: str, timestep: float, output: Any,
               comm_log: list[tuple[str, int]]) -> None:
        """Keep a computed forward's output (and its own collectives) for the forwards the rule will skip."""
        if rule is None or rule.range < 2:
            return
        ps = self.passes[branch]
        ps.history.push(timestep, output)
        ps.comm_log = comm_log


def _book_skip(counts: KindStats, forecast: bool) -> None:
    counts.calls += 1
    counts.broadcast += 1
    counts.forecast += int(forecast)
