# Sourced by demo.sh and test.sh: create .venv with Python >= 3.10 and install the project.
# Usage: . scripts/_venv.sh [extras]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in python3.11 python3.12 python3.10 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -E "^WARNING: Location" || true
fi
# Without an extra: the backend KERAS_BACKEND names, TensorFlow (Keras' default) if none.
SPEC=".[${1:-${KERAS_BACKEND:-tensorflow}}]"
echo "==> installing tbviz and style_transfer ($SPEC) into .venv"
.venv/bin/python -m pip install -q -e "$SPEC" 2>&1 | grep -v -E "^WARNING: Location|is ignored" || true
