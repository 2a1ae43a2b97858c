#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one GPU, under 8 minutes, a JSON report.
#   bash benchmarks/gpu_check.sh [--dry-run] [--out report.json] [--sections NAME ...] [report.json]
# Flags may come in any order; the report path is --out PATH (or --out=PATH), or one bare path ending
# in .json (the older `gpu_check.sh report.json --dry-run` form); default gpu_check.json, relative to
# the directory it is called from.
# Writes the report and nvidia-smi's view beside it (<report>.nvidia-smi.txt).
# PYTHON picks the interpreter (default .venv/bin/python, else python3). The run is stopped at 470 s
# whatever happens; the report keeps every section finished by then.
set -euo pipefail
out="gpu_check.json"
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "gpu_check.sh: --out needs a path" >&2; exit 2; }; out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --*) pass+=("$1"); shift ;;
    *.json) out="$1"; shift ;;
    *) pass+=("$1"); shift ;;   # values of --sections
  esac
done
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac   # relative to where it was called from
cd "$(dirname "$0")/.."
python="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p "$(dirname "$out")"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi > "${out%.json}.nvidia-smi.txt" 2>&1 || true
fi
exec timeout --signal=INT --kill-after=10 470 env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$python" benchmarks/gpu_check.py --out "$out" ${pass[@]+"${pass[@]}"}
