#!/usr/bin/env bash
# Set up (.venv, pinned packages, and as root the Debian packages the tests run: prometheus, chromium) and run the
# whole test suite inside a loopback-only namespace.
#   usage: scripts/test.sh [PYTEST ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# many small processes (Ray replicas, workers, spawned ranks) share 2 cores: one torch thread each
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec scripts/loopback-only .venv/bin/python -m pytest "$@"
