"""cluster/pab-alerts.yml offline, with Prometheus' own `promtool` (Debian's prometheus package): the file is valid,
the monitoring config loads it, it names only metrics deployments/metrics.py exports, and on synthetic series the
alert fires after its `for`, and only for the app whose gauge is 1 (a live app firing it:
tests/cluster/test_quality_watch_live.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml

from cluster import monitoring

RULES = monitoring.RULES_PATH


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing under CI: scripts/setup.sh --test installs prometheus, which ships it")
        pytest.skip("promtool is not installed (apt-get install -y prometheus)")
    return path


def test_the_rule_file_is_valid_and_the_monitoring_config_loads_it(tmp_path) -> None:
    checked = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "SUCCESS: 1 rules found" in checked.stdout, checked.stdout + checked.stderr
    config = monitoring.render_config(tmp_path / "ray", "2s")
    assert config["rule_files"] == [str(RULES.resolve())]
    template = yaml.safe_load(monitoring.TEMPLATE_PATH.read_text())
    assert (monitoring.TEMPLATE_PATH.parent / template["rule_files"][0]).resolve() == RULES.resolve()


def test_the_rules_name_only_exported_metrics() -> None:
    from deployments import metrics

    defined = {f"ray_{name}" for name in metrics.exported_names()}
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = set(re.findall(r"\bray_pab_[a-z_]+", "\n".join(exprs)))
    assert used and used <= defined, used - defined


UNIT_TEST = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'ray_pab_quality_fallback_active{{application="pab",model="tiny-shapes",preset="reference:latte",replica="r1"}}'
        values: '0x3 1x12'
      - series: 'ray_pab_quality_fallback_active{{application="other",model="tiny-shapes",preset="PAB-246",replica="r2"}}'
        values: '0x15'
    alert_rule_test:
      - eval_time: 1m
        alertname: PABQualityBelowFloor
        exp_alerts: []
      - eval_time: 90s
        alertname: PABQualityBelowFloor
        exp_alerts: []
      - eval_time: 3m
        alertname: PABQualityBelowFloor
        exp_alerts:
          - exp_labels: {{application: pab, model: tiny-shapes, preset: "reference:latte", severity: warning}}
            exp_annotations:
              summary: "PAB preset reference:latte of tiny-shapes is below the quality floor"
              description: >-
                The rolling median PSNR of reference:latte against the full model
                (ray_pab_quality_psnr_median_db) is below the floor (ray_pab_quality_floor_psnr_db) in application
                pab; jobs that name no preset now run with the fallback preset. Look at the
                "PAB quality vs the full model" panel; a less aggressive pab_preset, or calibrating one with
                `pab calibrate`, keeps the model above the floor.
"""


def test_the_alert_fires_after_its_for_and_only_for_the_app_whose_default_is_below_the_floor(tmp_path) -> None:
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(UNIT_TEST.format(rules=RULES.resolve()))
    done = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
