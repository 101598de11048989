#!/usr/bin/env bash
# Train a folder of cell configs (from `python -m ddpo_study grid configs SPEC DIR`) JOBS at a time, without
# Jupyter: for a GPU box or any machine where only the training should run. Each cell's wall time goes to
# DIR/times.tsv and its log to DIR/<cell>.log. Afterwards `python -m ddpo_study grid run SPEC` (where Jupyter is)
# renders every report without retraining, and writes the summary.
#
#   benchmarks/train_configs.sh DIR [JOBS] [THREADS_PER_JOB]
set -euo pipefail
dir=${1:?usage: train_configs.sh DIR [JOBS] [THREADS_PER_JOB]}
jobs=${2:-1}
threads=${3:-1}
py=${PYTHON:-python3}
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads PYTHONUNBUFFERED=1
one() {
  local cfg=$1 name t0 rc
  name=$(basename "$cfg" .json)
  t0=$(date +%s)
  rc=0
  "$py" -m ddpo_study train "$cfg" --set num_threads="$threads" >"${cfg%.json}.log" 2>&1 || rc=$?
  printf "%s\t%s\t%s\n" "$name" "$rc" "$(( $(date +%s) - t0 ))" >>"$dir/times.tsv"
  return 0
}
export -f one
export py threads dir
ls "$dir"/*.json | xargs -P "$jobs" -I{} bash -c 'one "$@"' _ {}
awk -F'\t' '$2 != 0 {bad++} END {printf "%d cell(s), %d failed\n", NR, bad}' "$dir/times.tsv"
