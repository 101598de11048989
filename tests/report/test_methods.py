"""The cross-method table and figure: every condition read at the same reward *gained* over its own base model,
so two base models that start from different rewards are on one scale."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpo_study import report
from ddpo_study.report.methods import fig_methods, gain_levels, has_methods, method_table
from tests.report.fakes import COLLAPSE, GAIN, fake_cell

FLOW_GAIN = 0.5


@pytest.fixture
def methods_grid(tmp_path):
    """DDPO on one base model (LoRA and full) and Flow-GRPO on another that starts 2.0 higher, 3 seeds each."""
    for seed in range(3):
        for mode in ("lora", "full"):
            fake_cell(tmp_path, mode, seed=seed, eval_every=1, algorithm="ddpo", model="toy")
        fake_cell(tmp_path, "lora", seed=seed, eval_every=1, base=3.0, gain=FLOW_GAIN, algorithm="flow_grpo",
                  model="toy-flow")
    return tmp_path


def test_levels_are_fractions_of_the_smallest_gain_and_each_run_is_read_from_its_own_base(methods_grid):
    df = report.load_grid_results(methods_grid)
    assert has_methods(df)
    levels, how = gain_levels(df, (0.1, 0.5, 0.8))
    assert levels == pytest.approx([0.1 * FLOW_GAIN, 0.5 * FLOW_GAIN, 0.8 * FLOW_GAIN], abs=0.01)
    assert "smallest gain" in how and "flow_grpo" in how
    table = method_table(df, fractions=(0.1, 0.5, 0.8))
    assert list(table["at"].drop_duplicates()) == ["base", "gain 10%", "gain 50%", "gain 80%", "final"]
    for (algorithm, mode), collapse in {("ddpo", "lora"): COLLAPSE["lora"], ("ddpo", "full"): COLLAPSE["full"],
                                        ("flow_grpo", "lora"): COLLAPSE["lora"]}.items():
        rows = table[(table["algorithm"] == algorithm) & (table["mode"] == mode)].set_index("at")
        assert rows.loc["base", "cross_div_clip"] == pytest.approx(0.3, abs=0.003)
        for at in ("gain 50%", "gain 80%"):  # the fake's diversity falls `collapse` per unit of reward gained
            g = rows.loc[at, "gain_level"]
            assert rows.loc[at, "runs_read"] == 3 and rows.loc[at, "reward_gain"] == pytest.approx(g)
            assert rows.loc[at, "cross_div_clip"] == pytest.approx(0.3 - collapse * g, abs=0.003)
        final_gain = FLOW_GAIN if algorithm == "flow_grpo" else GAIN[mode]
        assert rows.loc["final", "reward_gain"] == pytest.approx(final_gain, abs=0.01)
        assert rows.loc["final", "reward_gain_low"] < rows.loc["final", "reward_gain"] < rows.loc["final", "reward_gain_high"]
    # DDPO LoRA gains 0.05 before its first eval: that reading would be interpolated from the base, so it is refused
    lora = table[(table["algorithm"] == "ddpo") & (table["mode"] == "lora")].set_index("at")
    assert lora.loc["gain 10%", "runs_early"] == 3 and lora.loc["gain 10%", "runs_read"] == 0
    fig = fig_methods(table)
    assert sum(ax.get_visible() for ax in fig.axes) == 3  # judge_all, retrieval, cross-prompt (no distinct readings)


def test_levels_set_by_named_conditions_and_none_when_one_did_not_move(methods_grid, tmp_path_factory):
    df = report.load_grid_results(methods_grid)
    full = [c for c in report.conditions(df) if "full" in c]
    levels, _ = gain_levels(df, (0.5,), by=full)
    assert levels == pytest.approx([0.5 * GAIN["full"]], abs=0.01)
    flat = tmp_path_factory.mktemp("flat")
    for seed in range(3):
        fake_cell(flat, "lora", seed=seed, algorithm="ddpo", model="toy")
        fake_cell(flat, "lora", seed=seed, gain=-0.1, algorithm="nft", model="toy")  # falls
    levels, how = gain_levels(report.load_grid_results(flat))
    assert levels == [] and how.startswith("none (") and "did not move" in how


def test_the_summary_adds_the_table_only_for_a_grid_of_methods(methods_grid, fake_grid):
    names = {p.name for p in report.write_summary(methods_grid).files}
    assert {"methods.csv", "methods.md", "methods.png"} <= names
    assert not has_methods(report.load_grid_results(fake_grid))
    assert "methods.csv" not in {p.name for p in report.write_summary(fake_grid).files}
    # the summary hands over the learning table's collapse kinds; read here or there, the table is the same
    df = report.load_grid_results(methods_grid)
    learning = report.learning_table(df)
    kinds = dict(zip(learning["cell"], learning["collapse"]))
    assert method_table(df, collapse=kinds).equals(method_table(df))
    assert method_table(df, collapse=dict.fromkeys(kinds, "broke"))["collapse"].str.startswith("broke").sum() > 0


def _named_grid(root, specs, seeds=(0, 1, 2)):
    """Cells of named variants (the grid runner's status.json): specs = [(variant, algorithm, model, base)]."""
    import json

    index = 0
    for seed in seeds:
        for variant, algorithm, model, base in specs:
            cell = fake_cell(root, "lora", seed=seed, eval_every=1, base=base, algorithm=algorithm, model=model,
                             num_steps=10 + index % len(specs))  # the variants differ in a setting, as in a grid
            (cell / "status.json").write_text(json.dumps({"variant": variant, "index": index}))
            index += 1
    return report.load_grid_results(root)


def test_one_seed_reads_too_few_seeds_and_variants_of_one_method_get_their_own_colours(tmp_path):
    single = _named_grid(tmp_path / "one", [("a", "ddpo", "toy", 1.0), ("b", "nft", "toy", 1.0)], seeds=(0,))
    levels, how = gain_levels(single)
    assert levels == [] and "a, b: too few seeds to test" in how
    df = _named_grid(tmp_path / "two", [("nft", "nft", "toy", 1.0), ("nft-kl3x", "nft", "toy", 1.0)])
    fig = fig_methods(method_table(df))
    colours = {str(h.get_color()) for h in fig.legends[0].legend_handles}
    assert len(colours) == 2  # same method, base model and mode: told apart by colour


def test_the_montage_puts_each_condition_under_its_own_base_model(tmp_path):
    df = _named_grid(tmp_path, [("u1", "ddpo", "toy", 1.0), ("f1", "flow_grpo", "toy-flow", 3.0),
                                ("u2", "nft", "toy", 1.0)], seeds=(0,))
    fig = report.fig_montage(df)
    labels = [t.get_text().split("\n")[0] for t in fig.axes[0].get_yticklabels()]
    assert labels == ["base model toy (epoch 0)", "u1", "u2", "base model toy-flow (epoch 0)", "f1"]


def test_the_montage_draws_only_images_a_clone_has(tmp_path):
    from ddpo_study.grid.runner import write_cell_gitignore

    df = _named_grid(tmp_path, [("u1", "ddpo", "toy", 1.0)], seeds=(0, 1))
    cells = df.drop_duplicates("cell").sort_values("seed")["cell_dir"].tolist()
    # seed 0's images stay local (its grid keeps seed 1's): a clone could not draw them, so neither does the montage
    write_cell_gitignore(Path(cells[0]), keep_eval=False)
    write_cell_gitignore(Path(cells[1]), keep_eval=True)
    labels = [t.get_text() for t in report.fig_montage(df).axes[0].get_yticklabels()]
    assert "seed 1" in labels[1] and len(labels) == 2
    write_cell_gitignore(Path(cells[1]), keep_eval=False)  # no cell keeps its images: no montage rows
    assert [t.get_text() for t in report.fig_montage(df).axes[0].texts] == ["no eval images yet"]
