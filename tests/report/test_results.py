"""Reading run folders: config columns, condition labels and their order."""

from __future__ import annotations

import json

from ddpo_study import report
from tests.report.fakes import fake_cell


def test_load_grid_results_adds_config_columns_and_condition_labels(fake_grid):
    df = report.load_grid_results(fake_grid)
    assert df["cell"].nunique() == 36 and len(df) == 36 * 13
    for col in ("prompt_set", "mode", "diversity_lambda", "seed", "condition", "reward_mean", "done", "reward"):
        assert col in df, col
    assert df.attrs["factors"] == ["prompt_set", "mode", "diversity_lambda"]
    conds = report.conditions(df)
    assert len(conds) == 12 and conds[0] == "toy_30, lora, λ=0"  # fewest prompts, LoRA, no penalty first
    assert set(df.groupby("condition")["seed"].nunique()) == {3}


def test_keys_a_mode_never_reads_do_not_split_conditions(tmp_path):
    a = fake_cell(tmp_path, "lora", seed=0)
    b = fake_cell(tmp_path, "full", seed=0)
    for cell, lr in ((a, 1e-4), (b, 3e-5)):  # the LoRA run recorded another (unused) full learning rate
        cfg = json.loads((cell / "config.json").read_text())
        cfg["full_learning_rate"] = lr
        (cell / "config.json").write_text(json.dumps(cfg))
    df = report.load_grid_results(tmp_path)
    assert report.condition_factors(df) == ["mode"]
    assert set(df["condition"]) == {"lora", "full"}


def test_variants_crossed_with_an_axis_are_labelled_by_name_and_the_axis(tmp_path):
    """Study v3: methods (variants) x mode. A condition reads "nft, full", in the grid's variant order."""
    index = 0
    for seed in range(2):
        for mode in ("lora", "full"):
            for variant, algorithm in (("ddpo-unet", "ddpo"), ("nft-unet", "nft")):
                cell = fake_cell(tmp_path, mode, seed=seed, algorithm=algorithm)
                (cell / "status.json").write_text(json.dumps({"variant": variant, "index": index}))
                index += 1
    df = report.load_grid_results(tmp_path)
    assert report.conditions(df) == ["ddpo-unet, lora", "ddpo-unet, full", "nft-unet, lora", "nft-unet, full"]
    assert df.groupby("condition")["seed"].nunique().eq(2).all()
