"""A question re-read with another grid's runs of the same recipe pooled in (study v3's P2 with study v2's seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddpo_study import grid, report
from ddpo_study.grid.questions import Question
from ddpo_study.report.pooled import pooled_frame, pooled_table, recipe
from tests.report.fakes import fake_cell

SPEC = Path(__file__).resolve().parents[2] / "configs" / "study_v3.yaml"
P2 = Question(id="P2", text="LoRA vs full?", a={"mode": "lora"}, b={"mode": "full"}, where={"variant": "ddpo"},
              metrics=("cross_div_clip",), fractions=(0.5,), primary=True, min_seeds=2)


def _grid(root, seeds, named: bool, **kw):
    for i, seed in enumerate(seeds):
        for mode in ("lora", "full"):
            cell = fake_cell(root, mode, seed=seed, **kw)
            if named:  # what the grid runner records for a variant's cell
                (cell / "status.json").write_text(json.dumps({"variant": "ddpo", "index": 2 * i}))
    return root


def test_runs_of_the_same_recipe_join_their_side_and_others_do_not(tmp_path):
    ours = _grid(tmp_path / "v3", [3, 4, 5], named=True)
    theirs = _grid(tmp_path / "v2", [0, 1, 2], named=False)
    fake_cell(theirs, "lora", lam=10.0, seed=0)  # another recipe (a penalty): never pooled
    df = report.load_grid_results(ours)
    pooled, n = pooled_frame(df, P2, theirs)
    assert n == 6 and sorted(pooled.drop_duplicates("cell")["seed"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    table = pooled_table(df, [P2], {"P2": theirs})
    assert list(table["id"].unique()) == ["P2 pooled"] and set(table["kind"]) == {"exploratory"}
    assert "Secondary reading: pooled with 6 runs of the same recipe from v2" in table["question"].iloc[0]
    alone = report.questions_table(df, [P2])
    assert table["n_seeds"].max() == 6 > alone["n_seeds"].max() == 3


def test_a_seed_in_both_grids_or_no_match_is_a_row_that_says_so_and_the_recipe_ignores_seed_and_unread_keys(tmp_path):
    ours = _grid(tmp_path / "v3", [0, 1], named=True)
    theirs = _grid(tmp_path / "v2", [1], named=False)
    df = report.load_grid_results(ours)
    with pytest.raises(ValueError, match="seed 1 is in both grids"):
        pooled_frame(df, P2, theirs)
    table = pooled_table(df, [P2], {"P2": theirs})  # the summary goes on: the rows say why there is no reading
    assert table["verdict"].str.startswith("not answered: ").all() and "seed 1 is in both grids" in table["verdict"][0]
    assert table["difference"].isna().all() and (table["n_seeds"] == 0).all()
    other = tmp_path / "other"
    fake_cell(other, "lora", lam=10.0, seed=7)
    assert "no finished run of either side's recipe" in pooled_table(df, [P2], {"P2": other})["verdict"][0]
    base = {"mode": "lora", "seed": 0, "output_dir": "a"}
    assert recipe(base) == recipe({**base, "seed": 7, "output_dir": "b", "progressive_switch_epoch": 3})
    assert recipe({**base, "target_kl": 1}) == recipe({**base, "target_kl": 1.0}) != recipe({**base, "target_kl": 2.0})
    assert recipe(base) != recipe({**base, "diversity_lambda": 1.0})


def test_pool_with_must_name_a_question_and_a_folder():
    spec = grid.load_spec(SPEC)
    assert spec.pool_with and set(spec.pool_with) == {"P2"} and spec.pool_with["P2"].name == "toy_study"
    import yaml

    data = yaml.safe_load(SPEC.read_text())
    with pytest.raises(grid.GridError, match="names no question 'P9'"):
        grid.load_spec({**data, "pool_with": {"P9": "results/toy_study"}})
    with pytest.raises(grid.GridError, match="must map question ids to folder paths"):
        grid.load_spec({**data, "pool_with": ["results/toy_study"]})
