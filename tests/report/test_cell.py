"""One run's figures and table."""

from __future__ import annotations

import pytest

from ddpo_study import report
from ddpo_study.config import DDPOConfig
from tests.report.fakes import fake_cell


def test_cell_figures_and_table(tmp_path):
    cell = fake_cell(tmp_path, "progressive", "toy_30", 0.0, 0, epochs=4)
    figs = report.cell_figures(cell)
    assert set(figs) == {"curves", "ppo", "images"}
    assert report.eval_epochs(cell) == [0, 2, 4]
    table = report.cell_table(cell).set_index("metric")
    assert table.loc["param_dist", "epoch 4"] == pytest.approx(0.4)
    assert table.loc["reward_mean", "base (epoch 0)"] == 1.0
    diff = report.config_diff(DDPOConfig(mode="full", seed=3))
    assert set(diff["key"]) == {"mode", "seed"}
    jpeg = report.as_jpeg(figs["images"])
    assert jpeg.data[:2] == b"\xff\xd8" and jpeg.format == "jpeg"


def test_the_ppo_figure_shows_the_step_control_and_drops_ppo_stats_that_one_step_makes_zero(tmp_path):
    import json

    import pandas as pd

    cell = fake_cell(tmp_path, "lora", "toy_30", 0.0, 0, epochs=4)
    titles = [ax.get_title() for ax in report.fig_cell_ppo(cell).axes]
    assert report.LABELS["train_approx_kl"] in titles  # an older run without train_optimizer_steps: kept
    m = pd.read_csv(cell / "metrics.csv")
    m["train_optimizer_steps"] = [None, 1, 1, 1, 1]
    m["train_step_kl"] = [None, 4e-3, 2e-3, 1e-3, 2e-3]
    m["learning_rate"] = [None, 3e-3, 2e-3, 2e-3, 2.5e-3]
    m.to_csv(cell / "metrics.csv", index=False)
    cfg = json.loads((cell / "config.json").read_text())
    (cell / "config.json").write_text(json.dumps({**cfg, "target_kl": 2e-3}))
    fig = report.fig_cell_ppo(cell)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == [report.LABELS["train_step_kl"], report.LABELS["learning_rate"]]
    assert report.LABELS["train_approx_kl"] not in titles and report.LABELS["train_clipfrac"] not in titles
    kl_axis = fig.axes[0]
    assert kl_axis.get_yscale() == "log" and any(line.get_ydata()[0] == 2e-3 for line in kl_axis.get_lines()[1:])
