#!/bin/bash
# Train a grid as a Slurm array of N tasks, then write its summary once:
#   cluster/submit_grid.sh configs/toy_study.yaml 8        # 8 tasks, each cell in exactly one of them
# Extra sbatch options (partition, account, GPUs) go in SBATCH_ARGS, e.g. SBATCH_ARGS="-p gpu --gres=gpu:1";
# the summary job gets SUMMARY_SBATCH_ARGS (default: the same). Run it from the repository root (.venv, logs/).
# A failed task ID can be re-run alone, keeping the partition: sbatch --array=ID cluster/grid_array.sbatch SPEC JOBS N
set -euo pipefail
spec=${1:?usage: cluster/submit_grid.sh SPEC N [JOBS_PER_TASK]}
n=${2:?usage: cluster/submit_grid.sh SPEC N [JOBS_PER_TASK]}
jobs=${3:-1}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p logs
# shellcheck disable=SC2086  # SBATCH_ARGS is a list of options
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array=0-$((n - 1)) "$here/grid_array.sbatch" "$spec" "$jobs" "$n")
array=${array%%;*}  # --parsable prints "id" or "id;cluster"
# afterany: the summary also runs when a task failed (it reports unfinished cells as such).
# shellcheck disable=SC2086
sbatch --parsable ${SUMMARY_SBATCH_ARGS-${SBATCH_ARGS:-}} --dependency=afterany:"$array" "$here/grid_summary.sbatch" "$spec"
echo "array job $array ($n tasks), then the summary" >&2
