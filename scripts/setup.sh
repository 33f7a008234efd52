#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages, a virtual environment, the package.
# Idempotent: a second run only checks. Used by `make demo`, `make test` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

apt_install() {
  # Install Debian packages when missing; sudo only where we are not root.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${missing[@]}" >/dev/null; }
}

if command -v apt-get >/dev/null 2>&1; then
  apt_install dataset-fashion-mnist ${EXTRA_APT_PACKAGES:-}
else
  echo "setup: no apt-get here; Fashion-MNIST will be looked up in --data-dir, the cache, or downloaded"
fi

stamp="$VENV/.guidediff-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # Pin the CPU build of torch first so that no resolver ever pulls a multi-GB CUDA build.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  # k-diffusion's sampling module is the independent reference of the DPM-Solver++ test; --no-deps
  # keeps its heavy requirements (and any other torch) out: the test loads that one file
  "$VENV/bin/python" -m pip install -q --no-deps "k-diffusion==0.1.1.post1"
  touch "$stamp"
fi
