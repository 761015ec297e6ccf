#!/usr/bin/env bash
# Start Prometheus (Debian: apt-get install prometheus) beside the local Ray cluster, scraping it through Ray's
# service-discovery file. Options: --port (9090), --data-dir (.pab/prometheus), --ray-temp-dir (/tmp/ray),
# --scrape-interval (10s). Stop it with: cluster/start-monitoring.sh --stop
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" -m cluster.monitoring "$@"
