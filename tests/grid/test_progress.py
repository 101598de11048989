"""The runner's progress lines: one per new eval row of a training cell's metrics.csv, gains against epoch 0."""

from __future__ import annotations

import math

import pandas as pd

from ddpo_study.grid.progress import CellProgress, eval_lines

ROWS = [{"epoch": 0, "reward_mean": 5.0, "cross_div_clip": 1.0, "retrieval_acc": 1.0},
        {"epoch": 1, "reward_mean": math.nan, "train_reward_mean": 5.1},
        {"epoch": 2, "reward_mean": 5.25, "cross_div_clip": 0.9, "retrieval_acc": 0.875}]


def test_a_line_per_eval_row_with_the_gain():
    lines = eval_lines(pd.DataFrame(ROWS), "cell-a", 4)
    assert lines == ["cell-a: epoch 0/4  eval reward 5.000  cross-prompt 1.000  retrieval 1.00",
                     "cell-a: epoch 2/4  eval reward 5.250 (+0.250)  cross-prompt 0.900  retrieval 0.88"]
    assert eval_lines(pd.DataFrame(ROWS), "cell-a", 4, after_epoch=0) == lines[1:]
    assert eval_lines(pd.DataFrame(), "cell-a", 4) == []


def test_the_watcher_prints_each_eval_once_as_the_file_grows(tmp_path):
    metrics = tmp_path / "metrics.csv"
    printed: list[str] = []
    with CellProgress(tmp_path, "c", 4, echo=printed.append, interval=3600) as progress:  # polled by hand here
        progress.poll()
        assert printed == []  # nothing written yet
        pd.DataFrame(ROWS[:2]).to_csv(metrics, index=False)
        progress.poll()
        progress.poll()
        assert [p.split(":")[1].split()[1] for p in printed] == ["0/4"]
        pd.DataFrame(ROWS).to_csv(metrics, index=False)
    assert len(printed) == 2 and printed[1].startswith("c: epoch 2/4")  # the last look on exit
    resumed: list[str] = []
    with CellProgress(tmp_path, "c", 4, echo=resumed.append, interval=3600):
        pass
    assert resumed == []  # a resumed cell prints only what it adds
