"""Typed stats of one generation, from the hooks to the API response and the metrics recorder.

`pab.stats.PABStats` is the hooks' live accumulator; `PABCounts.from_pab` freezes it into a value that crosses Ray,
lands in the job store and reaches the API unchanged (its JSON is the `stats` object of a Video). `GenerationStats`
adds what the runner measured around the PAB counts: per-step seconds and stage timings, each with one meaning, so a
metrics recorder (`deployments.metrics`) reads fields instead of walking dicts by string keys.

Torch-free: the ingress and the generator replicas import this.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KindCounts(_Frozen):
    """Calls of one module kind in one generation: computed, or skipped (broadcast; `forecast` of them returned an
    extrapolation rather than the cached output)."""

    calls: int = 0
    computed: int = 0
    broadcast: int = 0
    hit_rate: float = 0.0
    forecast: int = 0


class CommCounter(_Frozen):
    calls: int = 0
    bytes: int = 0


class CommCounts(_Frozen):
    r"""
    Collectives of one generation.

    Args:
        issued, skipped: Per attention kind (or `other`), per collective op: calls and bytes sent, or not sent
            because the module was broadcast.
        issued_bytes, skipped_bytes, issued_calls, skipped_calls: Totals over every kind and op.
        saved_fraction: skipped / (issued + skipped) bytes.
    """

    issued: dict[str, dict[str, CommCounter]] = Field(default_factory=dict)
    skipped: dict[str, dict[str, CommCounter]] = Field(default_factory=dict)
    issued_bytes: int = 0
    skipped_bytes: int = 0
    issued_calls: int = 0
    skipped_calls: int = 0
    saved_fraction: float = 0.0


class PABCounts(_Frozen):
    """What PAB did in one generation: the preset, transformer forwards, per-kind counts, the step-level rule's
    forwards (`step`: served whole from the step cache or computed) and communication."""

    preset: str = "none"
    forwards: int = 0
    kinds: dict[str, KindCounts] = Field(default_factory=dict)
    attention: KindCounts = KindCounts()
    step: KindCounts = KindCounts()
    comm: CommCounts = CommCounts()

    @classmethod
    def from_pab(cls, stats: Any) -> "PABCounts":
        """Freeze a `pab.stats.PABStats` (the hooks' accumulator) at the end of a generation."""
        return cls.model_validate(stats.to_dict())


class StageTimings(_Frozen):
    r"""
    Seconds spent in each stage of one job; a stage that did not happen is None.

    Args:
        queue_wait_s: From submission until a runner started the job.
        denoise_s: Prompt encoding and the denoising loop.
        decode_s: VAE decode and conversion to uint8 frames.
        generate_s: The whole pipeline call (denoise + decode), as `VideoGenerator` measured it; for a batch, the
            batch's call.
        share_s: This job's share of it: `generate_s / batch_size`.
        encode_s: mp4, thumbnail and spritesheet encoding.
        total_s: From submission until the finished video was handed back (or stored).
    """

    queue_wait_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    generate_s: float | None = None
    share_s: float | None = None
    encode_s: float | None = None
    total_s: float | None = None

    def to_api(self) -> dict[str, float]:
        return self.model_dump(exclude_none=True)


class GenerationStats(_Frozen):
    r"""
    Everything measured about one finished generation.

    Args:
        pab: The PAB counts, or None when the model runs unhooked.
        step_s: Wall seconds of each denoising step, in order.
        timings: Stage timings (`StageTimings`).
        batch_size: How many jobs shared the denoising loop (1 when run alone).
    """

    pab: PABCounts | None = None
    step_s: tuple[float, ...] = ()
    timings: StageTimings = StageTimings()
    batch_size: int = 1

    def with_timings(self, **seconds: float | None) -> "GenerationStats":
        """A copy with some stage timings set (the runner adds queue wait and total)."""
        return self.model_copy(update={"timings": self.timings.model_copy(update=seconds)})
