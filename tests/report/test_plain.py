"""The summary page's opening paragraph, from fake grids whose numbers are known."""

from __future__ import annotations

import pytest

from ddpo_study import report
from ddpo_study.report.plain import plain_summary
from tests.report.fakes import GAIN, fake_cell


def test_one_seed_per_condition_says_exploratory_and_reads_each_arc(tmp_path):
    fake_cell(tmp_path, "lora", seed=0)
    fake_cell(tmp_path, "full", seed=0, gain=0.0)
    text = plain_summary(report.load_grid_results(tmp_path))
    assert text.startswith("One seed per condition: exploratory")
    lora = next(line for line in text.splitlines() if "**lora**" in line)  # ("exploratory" holds "lora" too)
    full = next(line for line in text.splitlines() if "**full**" in line)
    gain = float(lora.split("epoch 12 (")[1].split(")")[0])
    assert gain == pytest.approx(GAIN["lora"], abs=0.02)  # the fake rises by its mode's gain
    # lora loses COLLAPSE * gain = 0.2 of retrieval: lost; full did not move: kept
    assert "retrieval 0.50 -> 0.30" in lora.replace("prompt retrieval", "retrieval") and "**lost the prompts**" in lora
    assert "kept the prompts" in full and "(+0.001)" in full


def test_several_seeds_say_where_the_cis_are(tmp_path):
    for seed in (0, 1):
        fake_cell(tmp_path, "lora", seed=seed)
    text = plain_summary(report.load_grid_results(tmp_path))
    assert text.startswith("2 seeds per condition") and "(2 seeds, means)" in text
    assert plain_summary(report.load_grid_results(tmp_path / "nothing")) == ""
