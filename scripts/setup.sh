#!/usr/bin/env bash
# Create .venv at the repository root and install pab-serve with its pinned dependencies (and test extras).
# Idempotent: a stamp of pyproject.toml skips the install when nothing changed.
#   usage: scripts/setup.sh            what scripts/serve.sh runs: Python packages only
#          scripts/setup.sh --test     what scripts/test.sh runs: also the Debian packages the tests run
# Only --test touches the system: as root with apt-get, it installs the missing ones of TEST_DEB_PACKAGES at the
# versions pinned below (Debian 12; where a pinned version is not in the apt sources, the distribution's own, with
# a warning). It never stops or signals a process other than through the service manager of a package it installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run (name=version, the version tested on Debian 12 "bookworm"; `apt-cache madison NAME`
# lists what a machine offers): prometheus for tests/cluster and cluster/start-monitoring.sh, chromium for the
# browser tests.
TEST_DEB_PACKAGES=(
  "prometheus=2.42.0+ds-5+deb12u1"
  "chromium=156.0.8078.114-1~deb12u1"
)

with_test_packages=0
for arg in "$@"; do
  case $arg in
    --test) with_test_packages=1 ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pab-serve-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  .venv/bin/python -m pip install -q "pip==26.3"
  # constraints.txt pins every transitive package too (pyproject pins only the direct ones)
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi

# The pinned spec when this machine's apt sources offer that version, else the bare name (with a warning).
apt_spec() {
  local name=${1%%=*} version=${1#*=}
  if apt-cache madison "$name" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$version"; then
    echo "$1"
  else
    echo "setup: $name $version (the tested version) is not in this machine's apt sources; installing its own" >&2
    echo "$name"
  fi
}

install_test_packages() {
  local missing=() spec
  for spec in "${TEST_DEB_PACKAGES[@]}"; do
    command -v "${spec%%=*}" >/dev/null 2>&1 || missing+=("$spec")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: ${missing[*]%%=*} not found and cannot apt-get them (needs root and apt-get); the tests that run" \
      "them will be skipped" >&2
    return 0
  fi
  echo "setup: installing Debian packages for the tests: ${missing[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || echo "setup: apt-get update failed" >&2
  for spec in "${missing[@]}"; do
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$(apt_spec "$spec")" \
        >/dev/null; then
      echo "setup: could not install ${spec%%=*}; the tests that run it will be skipped" >&2
      continue
    fi
    if [[ ${spec%%=*} == prometheus ]]; then
      # The package may start its system service; the tests run their own Prometheus with the repo's config.
      # Stop that service through its service manager (by its unit / PID file), never by process name.
      systemctl stop prometheus >/dev/null 2>&1 || service prometheus stop >/dev/null 2>&1 || true
    fi
  done
}

if [[ $with_test_packages -eq 1 ]]; then
  install_test_packages
fi
