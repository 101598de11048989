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
