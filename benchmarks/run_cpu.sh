#!/bin/bash
# Re-run the CPU benchmarks one after another (alone on the machine: they time wall-clock) and keep each output
# under results/benchmarks/<script>.txt, headed by the command, the machine and the date.
#   bash benchmarks/run_cpu.sh [script ...]     # default: all of them, in the order below
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=results/benchmarks
mkdir -p "$OUT"
run() {  # name, then the command's arguments
  local name=$1; shift
  local file="$OUT/$name.txt"
  {
    echo "# command: $PY $*"
    echo "# machine: $(nproc) CPUs ($(uname -m)), $(free -g | awk '/Mem:/{print $2}') GB; $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD)"
    "$PY" "$@" 2>&1 | grep -v "it/s\]" || true
  } > "$file.tmp"
  mv "$file.tmp" "$file"
  echo "wrote $file"
}
trl_median() { awk '$1 == "TRL" && $2 ~ /^[0-9.]+$/ {print $2; exit}' "$OUT/vs_trl.txt"; }
want=${*:-vs_trl sampling_overhead compute_floor memory grid_time sd3_context}
for name in $want; do
  case $name in
    vs_trl) run vs_trl benchmarks/vs_trl.py --threads 2 ;;
    sampling_overhead) run sampling_overhead benchmarks/sampling_overhead.py --threads 2 ;;
    compute_floor) run compute_floor benchmarks/compute_floor.py --threads 2 --trl-seconds "$(trl_median)" ;;
    memory) run memory benchmarks/memory.py --threads 2 ;;
    grid_time) run grid_time benchmarks/grid_time.py results/toy_study --cells ;;
    sd3_context) run sd3_context benchmarks/sd3_context.py --threads 1 ;;
    *) echo "unknown benchmark $name" >&2; exit 2 ;;
  esac
done
