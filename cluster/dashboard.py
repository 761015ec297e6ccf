"""The pab-serve Grafana dashboard, defined once here and written to `cluster/grafana/pab-serve-dashboard.json`.

Why generate it: every panel shares the datasource variable and the label filters, and the tests need the PromQL
expressions as data (they run each one against a real Prometheus). The JSON file is what operators import, and the
Kubernetes ConfigMap in `k8s/` embeds it byte for byte. Regenerate with `python -m cluster.dashboard --write`.

Like Ray's own dashboards it has a `datasource` variable (so it works with any Prometheus datasource name) and a
`Cluster` variable on the `ray_io_cluster` label that KubeRay's PodMonitors add (locally the label is absent and the
default `.*` matches that too).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

DASHBOARD_PATH = Path(__file__).parent / "grafana" / "pab-serve-dashboard.json"
DASHBOARD_UID = "pab-serve"

_DS = {"type": "prometheus", "uid": "${datasource}"}
_PAB = 'application=~"$application",model=~"$model",preset=~"$preset",ray_io_cluster=~"$Cluster"'
_SERVE = 'application=~"$application",ray_io_cluster=~"$Cluster"'
_MODEL = 'application=~"$application",model=~"$model",ray_io_cluster=~"$Cluster"'
_RATE = "[$__rate_interval]"
# Ray exports a gauge only while it is being set (Serve re-sets its status gauges every 10 s, the ingress its queue
# depth every 5 s), so a series can miss scrapes; last_over_time bridges the gaps.
_GAUGE = "[1m]"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"  # or "stat"
    width: int = 12


def _quantiles(metric: str, selector: str, by: str = "",
               quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)) -> tuple[Target, ...]:
    group = f"le{', ' + by if by else ''}"
    label = f"{{{{{by}}}}} " if by else ""
    return tuple(
        Target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}{_RATE})))",
            f"{label}p{round(q * 100)}",
        )
        for q in quantiles
    )


def _ratio(part: str, whole: str, by: str = "", rate: bool = False) -> str:
    """sum(part) / sum(whole) of two counters; a `part` series that never appeared counts as 0 (Ray counters
    cannot be incremented by 0, so e.g. a kind with no broadcasts has no broadcast series at all)."""

    def total(metric: str) -> str:
        inner = f"{metric}{{{_PAB}}}"
        inner = f"rate({inner}{_RATE})" if rate else inner
        return f"sum{f' by ({by})' if by else ''} ({inner})"

    return f"({total(part)} or {total(whole)} * 0) / {total(whole)}"


JOB_PANELS: tuple[Panel, ...] = (
    Panel(
        "PAB hit rate since replica start",
        "Share of module calls answered from the PAB cache, per attention kind and for MLPs, over the lifetime of the "
        "running replicas. Matches the `hit_rate` in the jobs' own stats.",
        "percentunit",
        (
            Target(_ratio("ray_pab_attention_broadcasts_total", "ray_pab_attention_calls_total", "kind"), "{{kind}}"),
            Target(_ratio("ray_pab_attention_broadcasts_total", "ray_pab_attention_calls_total"), "all attention"),
            Target(_ratio("ray_pab_mlp_broadcasts_total", "ray_pab_mlp_calls_total"), "mlp"),
        ),
        kind="stat",
    ),
    Panel(
        "PAB hit rate",
        "Broadcasts / calls per attention kind over the rate window (no line while no job runs).",
        "percentunit",
        (
            Target(
                _ratio("ray_pab_attention_broadcasts_total", "ray_pab_attention_calls_total", "kind", rate=True),
                "{{kind}}",
            ),
            Target(_ratio("ray_pab_mlp_broadcasts_total", "ray_pab_mlp_calls_total", rate=True), "mlp"),
        ),
    ),
    Panel(
        "End-to-end latency",
        "Request accepted to video stored, p50/p95/p99.",
        "s",
        _quantiles("ray_pab_generation_latency_seconds", f'{_PAB},stage="end_to_end"'),
    ),
    Panel(
        "Latency by stage (p95)",
        "Queue wait, denoising and decode+encode: where a request's time goes.",
        "s",
        (
            Target(
                "histogram_quantile(0.95, sum by (le, stage) "
                f'(rate(ray_pab_generation_latency_seconds_bucket{{{_PAB},stage!="end_to_end"}}{_RATE})))',
                "{{stage}}",
            ),
        ),
    ),
    Panel(
        "Denoising step time",
        "Wall time of one denoising step (all ranks and CFG passes), p50/p95/p99.",
        "s",
        _quantiles("ray_pab_denoising_step_seconds", _PAB),
    ),
    Panel(
        "Queue depth",
        "Accepted jobs waiting for a generator and running (the job store), and requests Serve holds for the "
        "generator replicas (what its autoscaler sees).",
        "short",
        (
            Target(f"sum by (state) (last_over_time(ray_pab_queue_depth{{{_SERVE}}}{_GAUGE}))", "jobs {{state}}"),
            Target(
                f"sum by (deployment) (last_over_time(ray_serve_deployment_queued_queries{{{_SERVE}}}{_GAUGE}))",
                "{{deployment}} queued at handles",
            ),
            Target(
                f"sum by (deployment) (last_over_time(ray_serve_num_ongoing_requests_at_replicas{{{_SERVE}}}{_GAUGE}))",
                "{{deployment}} ongoing at replicas",
            ),
        ),
    ),
    Panel(
        "Replicas",
        "Healthy replicas per deployment and the autoscaler's target.",
        "short",
        (
            Target(
                f"sum by (deployment) (last_over_time(ray_serve_deployment_replica_healthy{{{_SERVE}}}{_GAUGE}))",
                "{{deployment}}",
            ),
            Target(
                f"max by (deployment) (last_over_time(ray_serve_autoscaling_target_replicas{{{_SERVE}}}{_GAUGE}))",
                "{{deployment}} target",
            ),
        ),
    ),
    Panel(
        "Throughput",
        "Completed jobs per minute and frames generated per second.",
        "short",
        (
            Target(
                f'sum(rate(ray_pab_jobs_total{{{_PAB},status="completed"}}{_RATE})) * 60', "jobs completed / min"
            ),
            Target(f"sum(rate(ray_pab_frames_generated_total{{{_PAB}}}{_RATE}))", "frames / s"),
        ),
    ),
    Panel(
        "Communication saved",
        "Bytes sent in sequence-parallel collectives (issued) and bytes broadcasts made unnecessary (skipped).",
        "Bps",
        (
            Target(
                f"sum by (outcome) (rate(ray_pab_collective_bytes_total{{{_PAB}}}{_RATE}))",
                "{{outcome}}",
            ),
        ),
    ),
    Panel(
        "Communication saved since replica start",
        "Skipped / (issued + skipped) collective bytes: the share of communication PAB removed.",
        "percentunit",
        (
            Target(
                f'(sum(ray_pab_collective_bytes_total{{{_PAB},outcome="skipped"}})'
                f" or sum(ray_pab_collective_bytes_total{{{_PAB}}}) * 0)"
                f" / sum(ray_pab_collective_bytes_total{{{_PAB}}})",
                "saved",
            ),
            Target(f'sum by (kind) (ray_pab_collective_bytes_total{{{_PAB},outcome="skipped"}})', "{{kind}} bytes"),
        ),
        kind="stat",
    ),
    Panel(
        "Failures",
        "Failed jobs and requests refused by back-pressure (429), per minute.",
        "short",
        (
            Target(
                f'sum(rate(ray_pab_jobs_total{{{_PAB},status="failed"}}{_RATE})) * 60 or vector(0)',
                "jobs failed / min",
            ),
            Target(
                f"sum by (reason) (rate(ray_pab_jobs_rejected_total{{{_SERVE}}}{_RATE})) * 60 or vector(0)",
                "rejected ({{reason}}) / min",
            ),
        ),
    ),
    Panel(
        "Engine batches",
        "Jobs per denoising loop of the generator replicas' engines: p50/p95 and the mean over the rate window "
        "(1 while jobs run alone; up to engine.max_batch_size when compatible jobs queue together).",
        "short",
        (
            *_quantiles("ray_pab_batch_size", _MODEL, quantiles=(0.5, 0.95)),
            Target(f"sum(rate(ray_pab_batch_size_sum{{{_MODEL}}}{_RATE})) / sum(rate(ray_pab_batch_size_count"
                   f"{{{_MODEL}}}{_RATE}))", "mean"),
        ),
    ),
    Panel(
        "Cancelled and re-run jobs",
        "Jobs cancelled by DELETE (stopped at a step end) and attempts started again after a worker or replica "
        "died, per minute, by reason.",
        "short",
        (
            Target(
                f'sum(rate(ray_pab_jobs_total{{{_PAB},status="cancelled"}}{_RATE})) * 60 or vector(0)',
                "cancelled / min",
            ),
            Target(
                f"sum by (reason) (rate(ray_pab_job_reruns_total{{{_MODEL}}}{_RATE})) * 60 or vector(0)",
                "re-run ({{reason}}) / min",
            ),
        ),
    ),
    Panel(
        "Queue wait",
        "From a job's submission until its batch started, p50/p95/p99 (grows when jobs wait in the engines).",
        "s",
        _quantiles("ray_pab_generation_latency_seconds", f'{_PAB},stage="queue_wait"'),
    ),
    Panel(
        "Jobs by status",
        "Jobs that reached each terminal status since the replicas started.",
        "short",
        (Target(f"sum by (status) (ray_pab_jobs_total{{{_PAB}}})", "{{status}}"),),
        kind="stat",
    ),
)

# The quality watch's panels have data only where it is on (`quality_watch.sample_rate` > 0).
_MODEL = 'application=~"$application",model=~"$model",ray_io_cluster=~"$Cluster"'
QUALITY_PANELS: tuple[Panel, ...] = (
    Panel(
        "PAB quality vs the full model (PSNR)",
        "The quality watch re-runs sampled PAB jobs with PAB off while a replica is idle: PSNR of the served video "
        "against the full model's, median over the rate window and the rolling median the fallback decides on, "
        "beside the floor.",
        "dB",
        (
            Target(
                f"histogram_quantile(0.5, sum by (le, preset) (rate(ray_pab_quality_psnr_db_bucket{{{_PAB}}}{_RATE})))",
                "{{preset}} p50",
            ),
            Target(f"max by (preset) (last_over_time(ray_pab_quality_psnr_median_db{{{_PAB}}}{_GAUGE}))",
                   "{{preset}} rolling median"),
            Target(f"max(last_over_time(ray_pab_quality_floor_psnr_db{{{_MODEL}}}{_GAUGE}))", "floor"),
        ),
    ),
    Panel(
        "Quality watch",
        "Samples measured per minute, SSIM (p50), whether jobs naming no preset run with the fallback (1), and the "
        "share of the worker groups' time spent on it (idle time only: user jobs preempt it).",
        "short",
        (
            Target(f"sum by (preset) (rate(ray_pab_quality_samples_total{{{_PAB}}}{_RATE})) * 60", "{{preset}} / min"),
            Target(f"histogram_quantile(0.5, sum by (le, preset) (rate(ray_pab_quality_ssim_bucket{{{_PAB}}}{_RATE})))",
                   "{{preset}} SSIM p50"),
            Target(f"max by (preset) (last_over_time(ray_pab_quality_fallback_active{{{_PAB}}}{_GAUGE}))",
                   "fallback instead of {{preset}}"),
            Target(f"sum(rate(ray_pab_background_seconds_total{{{_MODEL}}}{_RATE}))", "worker time share"),
        ),
    ),
)
PANELS: tuple[Panel, ...] = JOB_PANELS + QUALITY_PANELS


def _variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": _DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-query"},
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
    }


def _panel(panel: Panel, pid: int, x: int, y: int) -> dict:
    out = {
        "id": pid,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": _DS,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"datasource": _DS, "expr": t.expr, "legendFormat": t.legend, "refId": chr(ord("A") + i)}
            for i, t in enumerate(panel.targets)
        ],
    }
    if panel.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    else:
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    return out


def render() -> dict:
    """The dashboard as a Grafana JSON model."""
    panels, x, y = [], 0, 0
    for pid, panel in enumerate(PANELS, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        panels.append(_panel(panel, pid, x, y))
        x += panel.width
    datasource = {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "refresh": 1,
        "regex": "",
    }
    return {
        "uid": DASHBOARD_UID,
        "title": "pab-serve",
        "description": "Pyramid Attention Broadcast video serving: hit rate, latency, queue, replicas, throughput, "
        "quality against the full model.",
        "tags": ["pab-serve", "ray", "serve"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                datasource,
                _variable("Cluster", "Ray cluster", "label_values(ray_pab_jobs_total, ray_io_cluster)"),
                _variable(
                    "application",
                    "Serve application",
                    "label_values(ray_serve_deployment_replica_healthy, application)",
                ),
                _variable("model", "Model", "label_values(ray_pab_jobs_total, model)"),
                _variable("preset", "PAB preset", "label_values(ray_pab_jobs_total, preset)"),
            ]
        },
        "panels": panels,
    }


def render_text() -> str:
    return json.dumps(render(), indent=2) + "\n"


def expressions(panels: tuple[Panel, ...] = PANELS) -> list[str]:
    """Every PromQL expression the dashboard's panels run (or those of `panels`)."""
    return [t.expr for p in panels for t in p.targets]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {DASHBOARD_PATH.name} (else print it)")
    args = parser.parse_args(argv)
    if args.write:
        DASHBOARD_PATH.parent.mkdir(exist_ok=True)
        DASHBOARD_PATH.write_text(render_text())
    else:
        sys.stdout.write(render_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
