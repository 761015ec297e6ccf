"""Prometheus metrics for pab-serve, emitted through Ray's metrics API.

Ray exports every metric created here on each node's metrics export port (`ray start --metrics-export-port`), with
the prefix `ray_` (counters also get `_total`), so a KubeRay PodMonitor or the local Prometheus config in `cluster/`
scrapes them with no extra server. Inside a Serve replica `ray.serve.metrics` adds the `deployment`, `replica` and
`application` labels. The metric objects are created lazily, once per process, after the replica context exists.

Exported names (what the Grafana dashboard in `cluster/grafana/` queries):

- `ray_pab_attention_calls_total{model,preset,kind}` / `ray_pab_attention_broadcasts_total{...}`: per attention kind
  (spatial, temporal, cross), module calls and how many of them reused a cached output. Hit rate = ratio.
- `ray_pab_mlp_calls_total{model,preset}` / `ray_pab_mlp_broadcasts_total{model,preset}`: the same for MLP broadcast.
- `ray_pab_collective_bytes_total{model,preset,kind,op,outcome}`: bytes a replica's rank 0 sent in sequence-parallel
  collectives (`outcome="issued"`) and bytes a broadcast made unnecessary (`outcome="skipped"`); issued + skipped is
  what the generation would have sent without PAB.
- `ray_pab_frames_generated_total{model,preset}`: video frames of completed jobs.
- `ray_pab_jobs_total{model,preset,status}`: jobs that reached a terminal status (`completed`, `failed`,
  `cancelled`).
- `ray_pab_jobs_rejected_total{reason}`: requests refused before a job existed (back-pressure: `queue_full`).
- `ray_pab_queue_depth{state}`: jobs an ingress replica accepted, `waiting` (not yet on a generator) or `running`;
  sum over replicas for the cluster.
- `ray_pab_generation_latency_seconds{model,preset,stage}` histogram, `stage` in `queue_wait`, `denoising`,
  `decode_encode`, `end_to_end`.
- `ray_pab_denoising_step_seconds{model,preset}` histogram: one denoising step (all ranks, all CFG passes).
- `ray_pab_batch_size{model}` histogram: jobs per engine batch (one denoising loop).
- `ray_pab_job_reruns_total{model,reason}`: attempts started again after infrastructure lost one.
- `ray_pab_quality_psnr_db{model,preset}` / `ray_pab_quality_ssim{model,preset}` histograms and
  `ray_pab_quality_samples_total{model,preset}`: the quality watch's measurements of served PAB videos against the
  full model's (`deployments.quality_watch`; PSNR of identical videos counts as 100 dB).
- `ray_pab_quality_psnr_median_db{model,preset}` (the rolling median the fallback decides on),
  `ray_pab_quality_floor_psnr_db{model}` and `ray_pab_quality_fallback_active{model,preset}` (1 while jobs that
  name no preset run with the fallback instead of `preset`, the default) gauges, re-set every few seconds.
- `ray_pab_background_runs_total{model,work,outcome}` / `ray_pab_background_seconds_total{model,work}`: work the
  replicas do while idle (`work="quality_watch"`; `outcome` `completed`, `preempted` by a user job, `failed`).

Label values are bounded: `preset` is a known preset name (`preset_label`: `pab.presets.PRESET_NAMES`, the `+mlp`
pyramids, the per-model `reference:<family>` names) or `custom` for any other (a client's own PAB overrides may
carry any name), so no request can add series.

Notes on Ray 2.60: a histogram's `_sum` is computed from bucket midpoints, so use the buckets (quantiles), not
`_sum/_count`; a counter cannot be incremented by 0, so a series (e.g. `status="failed"`) exists only once it
happened and the dashboard adds `or vector(0)` where "none yet" should read 0.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from pab.runtime.stats import GenerationStats, PABCounts, StageTimings

from pab.presets import MLP_SUFFIX, PRESET_NAMES, PYRAMIDS, REFERENCE_DEFAULTS

logger = logging.getLogger("ray.serve")

CUSTOM_PRESET = "custom"
KNOWN_PRESETS: frozenset[str] = frozenset(
    (*PRESET_NAMES, *(f"{p}{MLP_SUFFIX}" for p in PYRAMIDS), *(c.name for c in REFERENCE_DEFAULTS.values()))
)

ATTENTION_KINDS: tuple[str, ...] = ("spatial", "temporal", "cross")

# Which `StageTimings` fields make up each latency stage; stages whose fields are all None are skipped.
TIMING_KEYS: dict[str, tuple[str, ...]] = {
    "queue_wait": ("queue_wait_s",),
    "denoising": ("denoise_s",),
    "decode_encode": ("decode_s", "encode_s"),
    "end_to_end": ("total_s",),
}

# Video jobs run from a fraction of a second (tiny CPU models) to tens of minutes (large models, many frames).
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
)
STEP_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
PSNR_BUCKETS_DB: tuple[float, ...] = (10, 15, 20, 22, 24, 26, 28, 30, 32, 34, 36, 40, 45, 50, 60, 100)
SSIM_BUCKETS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 1.0)

_JOB_TAGS = ("model", "preset")


@dataclass(frozen=True)
class _Spec:
    kind: str  # "counter" | "gauge" | "histogram"
    name: str  # as created; Ray exports it with the prefix `ray_` (and `_total` for counters)
    description: str
    tags: tuple[str, ...]
    buckets: tuple[float, ...] = ()


_SPECS: dict[str, _Spec] = {
    "attention_calls": _Spec(
        "counter", "pab_attention_calls", "Attention module calls, per attention kind.", _JOB_TAGS + ("kind",)
    ),
    "attention_broadcasts": _Spec(
        "counter",
        "pab_attention_broadcasts",
        "Attention module calls answered from the PAB cache (broadcast), per attention kind.",
        _JOB_TAGS + ("kind",),
    ),
    "mlp_calls": _Spec("counter", "pab_mlp_calls", "MLP module calls.", _JOB_TAGS),
    "mlp_broadcasts": _Spec(
        "counter", "pab_mlp_broadcasts", "MLP module calls answered from the PAB cache.", _JOB_TAGS
    ),
    "collective_bytes": _Spec(
        "counter",
        "pab_collective_bytes",
        "Bytes sent in sequence-parallel collectives (outcome=issued) or saved by a broadcast (outcome=skipped).",
        _JOB_TAGS + ("kind", "op", "outcome"),
    ),
    "frames": _Spec("counter", "pab_frames_generated", "Video frames of completed jobs.", _JOB_TAGS),
    "jobs": _Spec("counter", "pab_jobs", "Jobs that reached a terminal status.", _JOB_TAGS + ("status",)),
    "rejected": _Spec("counter", "pab_jobs_rejected", "Requests refused before a job was created.", ("reason",)),
    "queue_depth": _Spec(
        "gauge",
        "pab_queue_depth",
        "Accepted jobs of this ingress replica waiting for a generator or running.",
        ("state",),
    ),
    "latency": _Spec(
        "histogram",
        "pab_generation_latency_seconds",
        "Generation latency per stage (queue_wait, denoising, decode_encode, end_to_end).",
        _JOB_TAGS + ("stage",),
        LATENCY_BUCKETS_S,
    ),
    "step": _Spec(
        "histogram", "pab_denoising_step_seconds", "Wall time of one denoising step.", _JOB_TAGS, STEP_BUCKETS_S
    ),
    "batch_size": _Spec(
        "histogram", "pab_batch_size", "Jobs per denoising loop (one engine batch).", ("model",), BATCH_BUCKETS
    ),
    "reruns": _Spec(
        "counter", "pab_job_reruns", "Job attempts started again after infrastructure lost one, by reason.",
        ("model", "reason"),
    ),
    "quality_psnr": _Spec(
        "histogram", "pab_quality_psnr_db", "PSNR (dB) of sampled served PAB videos against the full model's.",
        _JOB_TAGS, PSNR_BUCKETS_DB,
    ),
    "quality_ssim": _Spec(
        "histogram", "pab_quality_ssim", "SSIM of sampled served PAB videos against the full model's.",
        _JOB_TAGS, SSIM_BUCKETS,
    ),
    "quality_samples": _Spec("counter", "pab_quality_samples", "Quality-watch measurements.", _JOB_TAGS),
    "quality_median": _Spec(
        "gauge", "pab_quality_psnr_median_db", "Rolling median PSNR (dB) of the quality watch's window.", _JOB_TAGS
    ),
    "quality_floor": _Spec("gauge", "pab_quality_floor_psnr_db", "The quality watch's PSNR floor (dB).", ("model",)),
    "quality_fallback": _Spec(
        "gauge", "pab_quality_fallback_active",
        "1 while jobs naming no preset run with the fallback preset instead of the default `preset`.", _JOB_TAGS,
    ),
    "background_runs": _Spec(
        "counter", "pab_background_runs", "Idle-time runs on the worker group, by work and outcome.",
        ("model", "work", "outcome"),
    ),
    "background_seconds": _Spec(
        "counter", "pab_background_seconds", "Worker-group seconds spent on idle-time work.", ("model", "work"),
    ),
}


def exported_names() -> list[str]:
    """The metric names as Prometheus sees them, less Ray's `ray_` prefix (histograms add _bucket/_count/_sum)."""
    return [f"{s.name}_total" if s.kind == "counter" else s.name for s in _SPECS.values()]


@functools.cache
def _metrics() -> SimpleNamespace:
    """Create the metric objects once per process (lazily: the Serve replica context must exist first)."""
    from ray.serve import metrics as m

    made: dict[str, Any] = {}
    for attr, spec in _SPECS.items():
        if spec.kind == "counter":
            made[attr] = m.Counter(spec.name, spec.description, spec.tags)
        elif spec.kind == "gauge":
            made[attr] = m.Gauge(spec.name, spec.description, spec.tags)
        else:
            made[attr] = m.Histogram(spec.name, spec.description, list(spec.buckets), spec.tags)
    return SimpleNamespace(**made)


def _never_raises(fn: Callable[..., None]) -> Callable[..., None]:
    """Metrics are a side channel: a failure to book one must not fail the job or the request that called it."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:
            logger.warning("pab: could not record metrics in %s", fn.__name__, exc_info=True)

    return wrapper


def _inc(counter: Any, value: float, tags: dict[str, str]) -> None:
    """Ray counters refuse increments of 0 (a series appears with its first event)."""
    if value > 0:
        counter.inc(value, tags)


def preset_label(name: Any) -> str:
    """The `preset` label value for a preset name: the name when it is a known preset, else `custom`."""
    return name if isinstance(name, str) and name in KNOWN_PRESETS else CUSTOM_PRESET


@_never_raises
def record_job_finished(
    model: str,
    preset: str,
    stats: GenerationStats | None,
    status: str,
    frames: int = 0,
) -> None:
    """Book one job that reached a terminal status (`completed`, `failed`, `cancelled`).

    `stats` is the job's `pab.runtime.stats.GenerationStats` (None when it ended before generating): its PAB counts,
    per-step seconds and stage timings; `frames` counts the frames of the finished video.
    """
    m = _metrics()
    tags = {"model": model, "preset": preset_label(preset)}
    m.jobs.inc(1, {**tags, "status": status})
    if stats is not None:
        if stats.pab is not None:
            _record_pab(m, tags, stats.pab)
        for stage, seconds in stage_seconds(stats.timings).items():
            m.latency.observe(seconds, {**tags, "stage": stage})
        for seconds in stats.step_s:
            m.step.observe(seconds, tags)
    _inc(m.frames, frames, tags)


def stage_seconds(timings: StageTimings) -> dict[str, float]:
    """Sum a job's stage timings into the latency stages; stages with none of their fields set are left out."""
    out: dict[str, float] = {}
    for stage, keys in TIMING_KEYS.items():
        present = [float(getattr(timings, k)) for k in keys if getattr(timings, k) is not None]
        if present:
            out[stage] = sum(present)
    return out


def _record_pab(m: SimpleNamespace, tags: dict[str, str], pab: PABCounts) -> None:
    for kind in ATTENTION_KINDS:
        s = pab.kinds.get(kind)
        if s is not None:
            _inc(m.attention_calls, s.calls, {**tags, "kind": kind})
            _inc(m.attention_broadcasts, s.broadcast, {**tags, "kind": kind})
    mlp = pab.kinds.get("mlp")
    if mlp is not None:
        _inc(m.mlp_calls, mlp.calls, tags)
        _inc(m.mlp_broadcasts, mlp.broadcast, tags)
    for outcome, table in (("issued", pab.comm.issued), ("skipped", pab.comm.skipped)):
        for kind, ops in table.items():
            for op, counter in ops.items():
                _inc(m.collective_bytes, counter.bytes, {**tags, "kind": kind, "op": op, "outcome": outcome})


@_never_raises
def observe_batch(model: str, size: int) -> None:
    """Book one engine batch of `size` jobs."""
    _metrics().batch_size.observe(size, {"model": model})


@_never_raises
def record_rerun(model: str, reason: str) -> None:
    """Book a job attempt started again because infrastructure lost the previous one (`worker_lost`, ...)."""
    _metrics().reruns.inc(1, {"model": model, "reason": reason})


@_never_raises
def set_queue_depth(waiting: int, running: int) -> None:
    """Publish how many of one ingress replica's accepted jobs wait for a generator and how many run."""
    m = _metrics()
    m.queue_depth.set(waiting, {"state": "waiting"})
    m.queue_depth.set(running, {"state": "running"})


@_never_raises
def record_job_rejected(reason: str = "queue_full") -> None:
    """Book a request refused before a job existed (e.g. 429 from back-pressure)."""
    _metrics().rejected.inc(1, {"reason": reason})


@_never_raises
def record_quality_sample(model: str, preset: str, psnr_db: float, ssim: float) -> None:
    """Book one quality-watch measurement of `preset` (PSNR already capped, see `serve_app.quality`)."""
    m = _metrics()
    tags = {"model": model, "preset": preset_label(preset)}
    m.quality_samples.inc(1, tags)
    m.quality_psnr.observe(psnr_db, tags)
    m.quality_ssim.observe(ssim, tags)


@_never_raises
def set_quality_status(model: str, default_preset: str, floor_psnr_db: float, fallback_active: bool,
                       medians: dict[str, float]) -> None:
    """Publish the quality watch's state: floor, fallback flag (for the default preset) and median per preset."""
    m = _metrics()
    m.quality_floor.set(floor_psnr_db, {"model": model})
    m.quality_fallback.set(1 if fallback_active else 0, {"model": model, "preset": preset_label(default_preset)})
    for preset, median in medians.items():
        m.quality_median.set(median, {"model": model, "preset": preset_label(preset)})


@_never_raises
def record_background(model: str, work: str, outcome: str, seconds: float) -> None:
    """Book one idle-time run (`completed`, `preempted` by a user job, or `failed`) and its seconds on the group."""
    m = _metrics()
    m.background_runs.inc(1, {"model": model, "work": work, "outcome": outcome})
    _inc(m.background_seconds, seconds, {"model": model, "work": work})
