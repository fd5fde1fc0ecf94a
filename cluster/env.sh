# shellcheck shell=bash
# Sourced by cluster/run-local.sh, cluster/start-local-head.sh, tests/run.sh and benchmarks/run.sh, before any of
# them enters the loopback-only namespace: make (once) and activate the project's venv.
# torch 2.13.0 (a CPU wheel where the machine has one) goes in first, where no torch is present, so the
# project's torch range does not pull a multi-GB CUDA build on a CPU-only machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RLHF_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
stamp="$VENV/.rlhf-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e "${ROOT}[test]"
  touch "$stamp"
fi
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0
cd "$ROOT"
