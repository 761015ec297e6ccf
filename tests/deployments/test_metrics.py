"""deployments/metrics.py without a cluster: what a job's stats and timings turn into, recorded by stand-in metric
objects that keep every call (the end-to-end export through Ray and Prometheus is tests/cluster/test_prometheus.py).
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest

from deployments import metrics
from pab.runtime.stats import GenerationStats, PABCounts, StageTimings


class _Recorder:
    """Keeps inc/observe/set calls by their tag set, like a metric with labels would."""

    def __init__(self) -> None:
        self.values: dict[tuple, float] = defaultdict(float)
        self.observed: dict[tuple, list[float]] = defaultdict(list)

    @staticmethod
    def _key(tags: dict[str, str]) -> tuple:
        return tuple(sorted(tags.items()))

    def inc(self, value: float, tags: dict[str, str]) -> None:
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")  # as Ray's Counter does
        self.values[self._key(tags)] += value

    def set(self, value: float, tags: dict[str, str]) -> None:
        self.values[self._key(tags)] = value

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self.observed[self._key(tags)].append(value)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    fake = SimpleNamespace(**{name: _Recorder() for name in metrics._SPECS})
    monkeypatch.setattr(metrics, "_metrics", lambda: fake)
    return fake


def _stats(**timings: float) -> GenerationStats:
    """A job's typed stats, its PAB counts frozen from a `pab.stats.PABStats`."""
    from pab.stats import PABStats

    stats = PABStats(preset="reference")
    for kind, (calls, broadcast) in {"spatial": (10, 6), "temporal": (10, 4), "cross": (10, 0), "mlp": (4, 0)}.items():
        stats.kinds[kind].calls, stats.kinds[kind].broadcast = calls, broadcast
        stats.kinds[kind].computed = calls - broadcast
    stats.book_issued("spatial", "all_to_all", 1000)
    stats.book_issued("other", "all_gather", 300)
    stats.book_skipped("spatial", "all_to_all", 600)
    return GenerationStats(pab=PABCounts.from_pab(stats), step_s=(0.2, 0.3), timings=StageTimings(**timings))


def test_a_finished_job_books_calls_broadcasts_bytes_frames_and_latencies(recorded: SimpleNamespace) -> None:
    timings = {"queue_wait_s": 0.5, "denoise_s": 3.0, "decode_s": 0.25, "encode_s": 0.125, "total_s": 4.0}
    metrics.record_job_finished("tiny-latte", "reference", _stats(**timings), "completed", frames=8)
    tags = (("model", "tiny-latte"), ("preset", "reference"))

    calls, broadcasts = recorded.attention_calls.values, recorded.attention_broadcasts.values
    assert {dict(k)["kind"]: v for k, v in calls.items()} == {"spatial": 10, "temporal": 10, "cross": 10}
    # No series for a kind that broadcast nothing: Ray counters cannot be incremented by 0.
    assert {dict(k)["kind"]: v for k, v in broadcasts.items()} == {"spatial": 6, "temporal": 4}
    assert dict(recorded.mlp_calls.values) == {tags: 4} and dict(recorded.mlp_broadcasts.values) == {}
    by_labels = recorded.collective_bytes.values.items()
    comm = {(dict(k)["kind"], dict(k)["op"], dict(k)["outcome"]): v for k, v in by_labels}
    assert comm == {
        ("spatial", "all_to_all", "issued"): 1000,
        ("other", "all_gather", "issued"): 300,
        ("spatial", "all_to_all", "skipped"): 600,
    }
    assert dict(recorded.frames.values) == {tags: 8}
    assert dict(recorded.jobs.values) == {tags + (("status", "completed"),): 1}
    stages = {dict(k)["stage"]: v for k, v in recorded.latency.observed.items()}
    assert stages == {"queue_wait": [0.5], "denoising": [3.0], "decode_encode": [0.375], "end_to_end": [4.0]}
    assert list(recorded.step.observed.values()) == [[0.2, 0.3]]  # every denoising step of the job


def test_a_failed_job_books_its_status_only(recorded: SimpleNamespace) -> None:
    metrics.record_job_finished("m", "none", None, "failed")
    assert dict(recorded.jobs.values) == {(("model", "m"), ("preset", "none"), ("status", "failed")): 1}
    assert not recorded.attention_calls.values and not recorded.latency.observed and not recorded.frames.values


def test_queue_depth_steps_and_rejections(recorded: SimpleNamespace) -> None:
    metrics.set_queue_depth(3, 1)
    metrics.set_queue_depth(2, 1)
    assert dict(recorded.queue_depth.values) == {(("state", "waiting"),): 2, (("state", "running"),): 1}
    metrics.observe_batch("m", 3)
    assert list(recorded.batch_size.observed.values()) == [[3]]
    metrics.record_rerun("m", "worker_lost")
    assert dict(recorded.reruns.values) == {(("model", "m"), ("reason", "worker_lost")): 1}
    metrics.record_job_rejected()
    metrics.record_job_rejected()
    assert dict(recorded.rejected.values) == {(("reason", "queue_full"),): 2}


def test_a_metrics_failure_never_reaches_the_caller(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    def broken():
        raise RuntimeError("metrics backend down")

    monkeypatch.setattr(metrics, "_metrics", broken)
    metrics.record_job_finished("m", "p", None, "completed")  # must not raise
    assert "could not record metrics" in caplog.text


def test_exported_names_follow_prometheus_conventions() -> None:
    names = metrics.exported_names()
    assert len(names) == len(set(names))
    for spec, name in zip(metrics._SPECS.values(), names):
        assert name.startswith("pab_")
        if spec.kind == "counter":
            assert name.endswith("_total")
        if "seconds" in spec.description.lower() or spec.buckets in (metrics.LATENCY_BUCKETS_S, metrics.STEP_BUCKETS_S):
            assert name.removesuffix("_total").endswith("_seconds")
        elif spec.kind == "histogram":
            assert name.endswith(("_size", "_db", "_ssim"))  # a count per event, decibels, the SSIM index
    assert "pab_collective_bytes_total" in names  # unit before _total


@pytest.mark.parametrize("name", ["none", "PAB-246", "PAB-357+mlp", "PAB-579", "reference", "reference:latte",
                                  "reference:cogvideox"])
def test_known_preset_names_are_their_own_label(name: str) -> None:
    assert metrics.preset_label(name) == name


@pytest.mark.parametrize("name", ["x" * 5000, "PAB-246+custom", "pab-246", "PAB-999", "reference:mine", "", None, 7,
                                  "<script>", "PAB-246\n"])
def test_any_other_preset_name_is_labelled_custom(name) -> None:
    assert metrics.preset_label(name) == "custom"


def test_every_metric_with_a_preset_label_books_clients_names_as_custom(recorded: SimpleNamespace) -> None:
    """A client's own name (`"pab": {"name": ...}`) never becomes a label value: 1000 names, one series each."""
    for i in range(1000):
        name = f"client-name-{i}" + "x" * (i % 7) * 1000
        metrics.record_job_finished("m", name, _stats(total_s=1.0), "completed", frames=2)  # steps booked too
    presets, booked = set(), set()
    for attr, spec in metrics._SPECS.items():
        recorder = getattr(recorded, attr)
        keys = list(recorder.values) + list(recorder.observed)
        if "preset" in spec.tags and keys:
            booked.add(attr)
            presets |= {dict(k)["preset"] for k in keys}
    assert presets == {"custom"}
    assert {"attention_calls", "collective_bytes", "frames", "jobs", "latency", "step", "mlp_calls"} <= booked
    assert len(recorded.jobs.values) == 1 and recorded.jobs.values[next(iter(recorded.jobs.values))] == 1000
