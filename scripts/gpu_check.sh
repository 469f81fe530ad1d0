#!/usr/bin/env bash
# The prepared GPU check, one command (see benchmarks/gpu_check.py): install as the README says, then the CUDA
# tests, the GPU benchmark grid and a short GPU training + evaluation run, figures in <out>/gpu_check.{json,md}.
#
#   bash scripts/gpu_check.sh [--out DIR] [--wheels DIR] [--dry]
#
# --wheels DIR: a machine without network (a lent GPU machine): install from the wheels in DIR with pip's
#   --no-index; packages the machine already has (torch, its CUDA libraries) are kept when they satisfy the pins.
# --dry: skip the install and run every step on the CPU at tiny sizes (CI's proof that the check is not broken).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=gpu_check WHEELS="" DRY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --dry) DRY="--dry"; shift ;;
    *) echo "error: scripts/gpu_check.sh: unknown argument $1; expected --out DIR, --wheels DIR or --dry" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
start=$(date +%s)
if [ -z "$DRY" ]; then
  echo "== install (README: Install) =="
  if [ ! -d .venv ]; then python3 -m venv --system-site-packages .venv; fi  # keeps the machine's torch visible
  . .venv/bin/activate
  if [ -n "$WHEELS" ]; then
    pip install -q --no-index --find-links "$WHEELS" -e ".[dev]" 2>&1 | tee "$OUT/install.log" || exit 1
  else
    pip install -q -e ".[dev]" 2>&1 | tee "$OUT/install.log" || exit 1
  fi
  echo "installed in $(( $(date +%s) - start )) s"
fi
python -m benchmarks.gpu_check --out "$OUT" $DRY
rc=$?
echo "gpu check: $(( $(date +%s) - start )) s in all (rc $rc)"
exit $rc
