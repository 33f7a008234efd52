#!/usr/bin/env bash
# A real install: build the wheel, install it into a fresh virtual environment (the CPU torch
# pinned first, so pip never pulls a CUDA build) and sample the shipped model from outside the
# source tree, which proves the shipped weights are inside the wheel.
# REUSE_VENV=DIR (optional, quicker): take torch and the other dependencies from that existing
# virtual environment (a .pth line) and install only the wheel, without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
work=$(mktemp -d "${TMPDIR:-/tmp}/guidediff-wheel.XXXXXX")
# deleting a venv with torch in it takes a while on a slow disk: let it finish in the background
trap '(rm -rf "$work" &)' EXIT
start=$(date +%s)
lap() { echo "wheel: $1 at $(( $(date +%s) - start )) s"; }

"$PYTHON" -m pip wheel -q --no-deps -w "$work/dist" . >/dev/null
wheel=$(ls "$work"/dist/guidediff-*.whl)
lap "built $(basename "$wheel")"
"$PYTHON" -c "import sys, zipfile; sys.exit(sys.argv[2] not in zipfile.ZipFile(sys.argv[1]).namelist())" \
  "$wheel" guidediff/weights/fmnist-cfg.safetensors || { echo "wheel: $wheel lacks guidediff/weights/fmnist-cfg.safetensors" >&2; exit 1; }

"$PYTHON" -m venv "$work/venv"
pip_quiet() {  # pip install, its output shown only when it fails
  "$work/venv/bin/python" -m pip install -q "$@" >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; exit 1; }
}
if [ -n "${REUSE_VENV:-}" ]; then
  site=$("$REUSE_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  own=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$site" >"$own/zz-dependencies.pth"  # appended after the venv's own site-packages
  pip_quiet --no-deps "$wheel"
  lap "installed the wheel (dependencies from $REUSE_VENV)"
else
  pip_quiet "$TORCH_PIN"
  lap "installed $TORCH_PIN"
  pip_quiet "$wheel"
  lap "installed the wheel and its dependencies"
fi

mkdir "$work/elsewhere"
cd "$work/elsewhere"  # no source tree here: only the installed package can answer
env -u PYTHONPATH "$work/venv/bin/guidediff" sample fmnist-cfg --n 1 --steps 2 --device cpu --out "$work/out" \
  >"$work/sample.log" 2>&1 || { cat "$work/sample.log" >&2; exit 1; }
test -s "$work/out/samples.npz" || { echo "wheel: guidediff sample wrote no samples.npz" >&2; exit 1; }
where=$(env -u PYTHONPATH "$work/venv/bin/python" -c "import guidediff, os; print(os.path.dirname(guidediff.__file__))")
case "$where" in "$work/venv"/*) ;; *) echo "wheel: guidediff was imported from $where, not the wheel" >&2; exit 1;; esac
echo "wheel: built, installed into a fresh venv and sampled fmnist-cfg in $(( $(date +%s) - start )) s"
