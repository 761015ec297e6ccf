#!/usr/bin/env bash
# Create .venv at the repository root and install pab-serve with its pinned dependencies (and test extras).
# Idempotent: a stamp of pyproject.toml skips the install when nothing changed. Installs Debian's prometheus
# (used by the monitoring tests and `cluster/start-monitoring.sh`) when run as root and it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pab-serve-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
fi
if ! command -v prometheus >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's prometheus package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # the package may start a system service; we run our own Prometheus with the repo's config instead
    (systemctl stop prometheus || service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
  else
    echo "setup: prometheus not found and cannot apt-get it; the Prometheus tests will be skipped" >&2
  fi
fi
