#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one GPU, under 8 minutes, a JSON report.
#   bash benchmarks/gpu_check.sh [report.json] [--dry-run] [--sections ...]
# Writes the report (default gpu_check.json) and nvidia-smi's view beside it (<report>.nvidia-smi.txt).
# PYTHON picks the interpreter (default .venv/bin/python, else python3). The run is stopped at 470 s
# whatever happens; the report keeps every section finished by then.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check.json}"
[ $# -gt 0 ] && shift
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi > "${out%.json}.nvidia-smi.txt" 2>&1 || true
fi
exec timeout --signal=INT --kill-after=10 470 env PYTHONPATH="$PWD" "$python" benchmarks/gpu_check.py --out "$out" "$@"
