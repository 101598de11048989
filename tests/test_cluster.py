"""The Slurm scripts in cluster/: each array task's --shard, for any --array range, and the summary job's
dependency on the array, run with stand-ins for python and sbatch (no Slurm needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ddpo_study import grid

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"


def stub(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def shard_of_task(tmp_path: Path, spec: str, task: int, first: int, count: int, step: int = 1,
                  shards: int | None = None) -> str:
    """The --shard that grid_array.sbatch passes for array task id ``task`` of the ids first, first+step, ...
    (``count`` of them), given SHARDS as its third argument or not."""
    echo = stub(tmp_path / "python", 'echo "$@"\n')
    env = {**os.environ, "PYTHON": str(echo), "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_STEP": str(step),
           "SLURM_ARRAY_TASK_MIN": str(first), "SLURM_ARRAY_TASK_COUNT": str(count), "SLURM_SUBMIT_DIR": str(REPO)}
    extra = [] if shards is None else [str(shards)]
    args = subprocess.run(["bash", str(CLUSTER / "grid_array.sbatch"), spec, "2", *extra], env=env,
                          capture_output=True, text=True, check=True).stdout.split()
    assert args[:4] == ["-m", "ddpo_study", "grid", "run"] and args[4] == spec and "--no-summary" in args
    assert args[args.index("--jobs") + 1] == "2"
    return args[args.index("--shard") + 1]


@pytest.mark.parametrize("first,count,step", [(0, 5, 1), (1, 4, 1), (0, 1, 1), (3, 7, 1), (0, 4, 2)])
def test_array_tasks_cover_every_cell_exactly_once(tmp_path, first, count, step):
    spec = "configs/toy_study.yaml"
    cells = grid.expand(grid.load_spec(REPO / spec))
    taken = []
    for task in range(first, first + count * step, step):
        shard = shard_of_task(tmp_path, spec, task, first, count, step)
        taken += [c.index for c in grid.select_shard(cells, shard)]
    assert sorted(taken) == [c.index for c in cells]  # every cell once: none lost, none run twice


def test_a_resubmitted_task_keeps_its_shard_of_the_original_partition(tmp_path):
    # submit_grid.sh passes N; re-running task 5 alone (--array=5: one task) must still be shard 5 of 8
    assert shard_of_task(tmp_path, "configs/toy_study.yaml", 5, 5, 1, shards=8) == "5/8"


def test_outside_an_array_job_the_task_script_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    res = subprocess.run(["bash", str(CLUSTER / "grid_array.sbatch"), "configs/toy_study.yaml"], env=env,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "not in a Slurm array job" in res.stderr


def test_submit_runs_the_summary_after_the_whole_array(tmp_path):
    log = tmp_path / "sbatch.log"
    stub(tmp_path / "sbatch", f'echo "$@" >> {log}\nif [[ "$*" == *--array* ]]; then echo "4242;cl"; '
                              'else echo 4243; fi\n')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SBATCH_ARGS": "-p cpu"}
    subprocess.run(["bash", str(CLUSTER / "submit_grid.sh"), "configs/toy_study.yaml", "8"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, text=True)
    array, summary = log.read_text().splitlines()
    assert "-p cpu" in array and "--array=0-7" in array and array.endswith("grid_array.sbatch configs/toy_study.yaml 1 8")
    assert "-p cpu" in summary and "--dependency=afterany:4242 " in summary
    assert summary.endswith("grid_summary.sbatch configs/toy_study.yaml")


def test_every_cluster_script_parses():
    for script in sorted(CLUSTER.iterdir()):
        subprocess.run(["bash", "-n", str(script)], check=True)
