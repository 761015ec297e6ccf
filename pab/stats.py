"""What PAB did in one generation: per-kind hit accounting and the communication it issued or skipped.

The sequence-parallel layer reports every collective through `record_collective`; the broadcast hooks keep a scope
naming the module being computed, so bytes are booked under that module's attention kind, and when the module is
later broadcast its last collectives are booked as skipped. Both numbers feed the Prometheus metrics.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

STAT_KINDS: tuple[str, ...] = ("spatial", "temporal", "cross", "mlp")
OTHER_KIND = "other"
"""Collectives issued outside any classified module (input scatter, output gather)."""


@dataclass
class KindStats:
    """Calls of one kind; `broadcast` counts every call that skipped its computation, `forecast` those of them that
    returned an extrapolation rather than the cached output."""

    calls: int = 0
    computed: int = 0
    broadcast: int = 0
    forecast: int = 0

    @property
    def hit_rate(self) -> float:
        return self.broadcast / self.calls if self.calls else 0.0

    def add(self, other: "KindStats") -> None:
        self.calls += other.calls
        self.computed += other.computed
        self.broadcast += other.broadcast
        self.forecast += other.forecast

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "computed": self.computed, "broadcast": self.broadcast, "hit_rate": self.hit_rate,
                "forecast": self.forecast}


@dataclass
class CommCounter:
    calls: int = 0
    bytes: int = 0

    def add(self, nbytes: int, calls: int = 1) -> None:
        self.calls += calls
        self.bytes += nbytes


@dataclass
class PABStats:
    """Counts for the current (or, between generations, the last) generation.

    `step` counts transformer forwards under the step-level rule: a forward served from the step cache is also
    booked as a broadcast of every classified module (none of them ran), so per-kind hit rates give the share of
    attention and MLP work skipped by both levels together.
    """

    preset: str = "custom"
    forwards: int = 0
    kinds: dict[str, KindStats] = field(default_factory=lambda: {k: KindStats() for k in STAT_KINDS})
    issued: dict[tuple[str, str], CommCounter] = field(default_factory=dict)
    skipped: dict[tuple[str, str], CommCounter] = field(default_factory=dict)
    step: KindStats = field(default_factory=KindStats)

    def reset(self) -> None:
        self.forwards = 0
        self.kinds = {k: KindStats() for k in STAT_KINDS}
        self.step = KindStats()
        self.issued.clear()
        self.skipped.clear()

    def book_issued(self, kind: str, op: str, nbytes: int) -> None:
        self.issued.setdefault((kind, op), CommCounter()).add(nbytes)

    def book_skipped(self, kind: str, op: str, nbytes: int) -> None:
        self.skipped.setdefault((kind, op), CommCounter()).add(nbytes)

    def bytes_issued(self, kind: str | None = None, op: str | None = None) -> int:
        return _total(self.issued, kind, op, "bytes")

    def bytes_skipped(self, kind: str | None = None, op: str | None = None) -> int:
        return _total(self.skipped, kind, op, "bytes")

    def calls_issued(self, kind: str | None = None, op: str | None = None) -> int:
        return _total(self.issued, kind, op, "calls")

    def calls_skipped(self, kind: str | None = None, op: str | None = None) -> int:
        return _total(self.skipped, kind, op, "calls")

    @property
    def attention(self) -> KindStats:
        """All attention kinds together (MLP excluded)."""
        total = KindStats()
        for kind in STAT_KINDS[:3]:
            total.add(self.kinds[kind])
        return total

    def to_dict(self) -> dict[str, Any]:
        issued, skipped = self.bytes_issued(), self.bytes_skipped()
        return {
            "preset": self.preset,
            "forwards": self.forwards,
            "kinds": {k: s.to_dict() for k, s in self.kinds.items()},
            "attention": self.attention.to_dict(),
            "step": self.step.to_dict(),
            "comm": {
                "issued": _nest(self.issued),
                "skipped": _nest(self.skipped),
                "issued_bytes": issued,
                "skipped_bytes": skipped,
                "issued_calls": self.calls_issued(),
                "skipped_calls": self.calls_skipped(),
                "saved_fraction": skipped / (issued + skipped) if issued + skipped else 0.0,
            },
        }


def _total(table: dict[tuple[str, str], CommCounter], kind: str | None, op: str | None, attr: str) -> int:
    return sum(getattr(c, attr) for (k, o), c in table.items() if kind in (None, k) and op in (None, o))


def _nest(table: dict[tuple[str, str], CommCounter]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (kind, op), c in sorted(table.items()):
        out.setdefault(kind, {})[op] = {"calls": c.calls, "bytes": c.bytes}
    return out


@dataclass
class _Scope:
    stats: PABStats
    kind: str
    log: list[tuple[str, int]] | None  # collectives of the module being computed, replayed as skipped on broadcast


_SCOPE: ContextVar[_Scope | None] = ContextVar("pab_comm_scope", default=None)


class comm_scope:  # noqa: N801 - used as a context manager, like contextlib's
    """Book collectives issued inside the block under `kind`, and append them to `log` when given.

    A class rather than a generator context manager: it wraps every computed module call, so it is kept cheap.
    """

    __slots__ = ("_scope", "_token")

    def __init__(self, stats: PABStats, kind: str, log: list[tuple[str, int]] | None = None) -> None:
        self._scope = _Scope(stats, kind, log)

    def __enter__(self) -> None:
        self._token = _SCOPE.set(self._scope)

    def __exit__(self, *exc: Any) -> None:
        _SCOPE.reset(self._token)


def record_collective(op: str, nbytes: int) -> None:
    """Called by the sequence-parallel layer for every collective it issues (bytes sent by this rank)."""
    scope = _SCOPE.get()
    if scope is None:
        return
    scope.stats.book_issued(scope.kind, op, int(nbytes))
    if scope.log is not None:
        scope.log.append((op, int(nbytes)))
