#!/usr/bin/env bash
# Set up (.venv, pinned packages) and serve the embedded default model with the OpenAI-compatible Videos API:
# a local Ray cluster, one generator replica with 2 workers (broadcast sequence parallel on CPU), http://127.0.0.1:8000/v1
#   usage: scripts/serve.sh [pab serve ARGS...]     (e.g. --config serve_app/configs/serve_cpu.yaml, --port 8000)
# Installs Python packages into .venv only: no system packages, and it stops no other process.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-0} PAB_BIND_HOST=${PAB_BIND_HOST:-127.0.0.1}
exec .venv/bin/pab serve "$@"
