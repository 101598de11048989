"""A run continued from another run's adapter: the joined curve, the same-start check and the plateau read."""

import json

import pandas as pd
import pytest

from ddpo_study import report
from tests.report.fakes import fake_cell


def continuation(root, original, name, gain, start=None, epochs=8):
    """A fake run of ``epochs`` started from ``original``'s adapter: its epoch 0 is ``original``'s last eval
    (or ``start``), and it then rises by ``gain``."""
    last = pd.read_csv(original / "metrics.csv").dropna(subset=["reward_mean"]).iloc[-1]
    cell = fake_cell(root / name, epochs=epochs, eval_every=2, gain=gain,
                     base=float(last["reward_mean"]) if start is None else start)
    cfg = json.loads((cell / "config.json").read_text())
    cfg["init_lora"] = str(original / "final" / "lora")
    (cell / "config.json").write_text(json.dumps(cfg))
    return cell


def test_a_flat_continuation_plateaus_the_joined_curve_and_a_rising_one_does_not(tmp_path):
    original = fake_cell(tmp_path / "orig", epochs=12, eval_every=2, gain=1.0)
    flat = continuation(tmp_path / "more", original, "flat", gain=0.0)
    rising = continuation(tmp_path / "more", original, "rising", gain=1.0)
    assert report.original_of(flat) == original

    joined = report.join_curves(pd.read_csv(original / "metrics.csv"), pd.read_csv(flat / "metrics.csv"))
    assert joined["epoch"].tolist() == list(range(21))  # 0-12 of the original, then 1-8 shifted by 12
    assert joined["part"].tolist() == ["original"] * 13 + ["continued"] * 8

    table = pd.DataFrame({name: report.continued_table(cell.parent).iloc[0]
                          for name, cell in (("flat", flat), ("rising", rising))}).T
    assert table["same_start"].all() and (table["start_rel_diff"] == 0).all()
    assert table.loc["flat", "plateaued_joined"] and not table.loc["rising", "plateaued_joined"]
    # the gain of the continuation is over its own epoch 0 (the original's last model), paired per image
    assert table.loc["rising", "gain_more"] == pytest.approx(1.0, abs=0.15) and table.loc["rising", "gain_more_z"] > 3
    assert abs(table.loc["flat", "gain_more"]) < 0.15
    assert table.loc["rising", "gain_total"] == pytest.approx(2.0, abs=0.15)
    assert table.loc["flat", "epochs"] == "12-20"
    assert table.loc["rising", "reward_mean_20"] > table.loc["rising", "reward_mean_12"] + 0.9


def test_a_continuation_that_does_not_start_where_its_original_ended_is_flagged(tmp_path):
    original = fake_cell(tmp_path / "orig", epochs=12, eval_every=2, gain=1.0)
    other = continuation(tmp_path / "more", original, "other", gain=0.0, start=1.5)  # not the original's end (2.0)
    row = report.continued_table(other.parent).iloc[0]
    assert not row["same_start"] and row["start_rel_diff"] == pytest.approx(0.25, abs=0.01)


def test_a_missing_original_is_one_clear_error(tmp_path):
    original = fake_cell(tmp_path / "orig", epochs=12, eval_every=2, gain=1.0)
    cell = continuation(tmp_path / "more", original, "lost", gain=0.0)
    (original / "metrics.csv").unlink()
    with pytest.raises(FileNotFoundError, match="the run its init_lora came from"):
        report.original_of(cell)
