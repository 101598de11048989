"""The questions: defaults for a spec without ``questions:``, the spec's pre-registered contrasts paired by seed,
Holm over the primaries, verdicts with their reasons, and byte-identical files when the summary is re-run."""

from __future__ import annotations

import numpy as np
import pytest

from ddpo_study import report
from ddpo_study.grid.spec import load_spec
from tests.report.fakes import COLLAPSE, fake_cell


def test_the_default_questions_are_answered_from_the_numbers(fake_grid):
    df = report.load_grid_results(fake_grid)
    t = report.questions_table(df)
    assert list(t["id"].drop_duplicates()) == ["Q1", "Q2", "Q3", "Q3 cost", "Q4"]
    assert (t["kind"] == "exploratory").all() and t["p_holm"].isna().all()
    q1 = t[(t["id"] == "Q1") & (t["metric"] == "cross_div_clip")].set_index("fraction")
    assert (q1["a"] == "lora").all() and (q1["b"] == "full").all() and (q1["where"] == "toy_30, λ=0").all()
    # 25% of the smaller gain: LoRA is past it at its first eval -> refused; 50% and 75%: read, LoRA lower
    assert q1.loc[0.25, "verdict"].startswith("not answered: level refused (lora: 3 of 3 runs reach it")
    for f in (0.5, 0.75):
        expected = -(COLLAPSE["lora"] - COLLAPSE["full"]) * (q1.loc[f, "reward_level"] - 1.0)
        assert q1.loc[f, "difference"] == pytest.approx(expected, abs=0.005) and q1.loc[f, "n_seeds"] == 3
        assert q1.loc[f, "verdict"].startswith("answered: lora < full by ")
        assert q1.loc[f, "ci_low"] < q1.loc[f, "difference"] < q1.loc[f, "ci_high"] < 0
    distinct = t[(t["id"] == "Q1") & (t["metric"] == "judge_distinct") & (t["fraction"] == 0.5)]
    assert distinct["verdict"].iloc[0] == "not answered: judge_distinct is not logged by these runs"
    cost = t[t["id"] == "Q3 cost"].iloc[0]
    assert cost["at"] == "final epoch" and cost["a"] == "λ=0.5" and cost["difference"] == pytest.approx(-0.2, abs=0.01)
    assert cost["verdict"].startswith("answered: λ=0.5 < λ=0 by 0.2")
    q3 = t[(t["id"] == "Q3") & (t["metric"] == "cross_div_clip")]
    assert q3["at"].str.startswith("reward ").all()  # the penalty is read at matched reward, not equal epochs
    q4 = t[(t["id"] == "Q4") & (t["metric"] == "cross_div_clip") & t["verdict"].str.startswith("answered")]
    assert len(q4) and (q4["difference"] > 0).all()  # progressive keeps more than LoRA (read after its switch)


def test_default_questions_missing_from_a_grid_say_so(tmp_path):
    for seed in range(2):
        fake_cell(tmp_path, "lora", "toy_30", 0.0, seed)
    t = report.questions_table(report.load_grid_results(tmp_path))
    assert list(t["id"]) == ["Q1", "Q2", "Q3", "Q3 cost", "Q4"]
    assert t["verdict"].str.startswith("not answered: not in this grid").all()


def tiny_grid(root, seeds=3, full_gain=0.6):
    for seed in range(seeds):
        fake_cell(root, "lora", seed=seed)
        fake_cell(root, "full", seed=seed, gain=full_gain)
    return root


def spec_of(root, questions, seeds=3) -> dict:
    return {"name": "tiny", "notebook": "notebooks/cell.ipynb", "output_root": str(root),
            "cell_name": "{mode}-s{seed}", "fixed": {"model": "toy", "reward": "jpeg_compressibility"},
            "axes": {"seed": list(range(seeds)), "mode": ["lora", "full"]}, "questions": questions}


QUESTIONS = [
    {"id": "Q1", "text": "LoRA vs full at matched reward", "a": {"mode": "lora"}, "b": {"mode": "full"},
     "metrics": ["cross_div_clip", "retrieval_acc"], "at": "matched", "fractions": [0.5, 0.75], "primary": True},
    {"id": "Q1 final", "text": "LoRA vs full at the last epoch", "a": {"mode": "lora"}, "b": {"mode": "full"},
     "metrics": ["judge_all", "reward_mean"], "at": "final", "primary": True},
    {"id": "E1", "text": "exploratory, more seeds than there are", "a": {"mode": "full"}, "b": {"mode": "lora"},
     "metrics": ["cross_div_clip"], "at": "final", "min_seeds": 4},
]


def test_spec_questions_are_paired_by_seed_with_holm_over_the_primaries(tmp_path):
    root = tiny_grid(tmp_path / "grid")
    spec = load_spec(spec_of(root, QUESTIONS))
    t = report.questions_table(report.load_grid_results(root), spec.questions)
    assert list(t["id"]) == ["Q1"] * 4 + ["Q1 final"] * 2 + ["E1"]
    assert list(t["kind"]) == ["primary"] * 6 + ["exploratory"]
    primary = t[t["kind"] == "primary"]
    assert primary["p_holm"].tolist() == pytest.approx(report.holm(primary["p"].tolist()))
    assert (primary["p_holm"] >= primary["p"]).all()
    assert primary["verdict"].str.contains("Holm p").all()
    reward = t[(t["id"] == "Q1 final") & (t["metric"] == "reward_mean")].iloc[0]
    assert reward["difference"] == pytest.approx(0.4, abs=0.01)
    assert reward["verdict"].startswith("answered: lora > full")
    e1 = t[t["id"] == "E1"].iloc[0]
    assert e1["verdict"] == "not answered: fewer than 4 seeds (3 common seeds of a and b with a final epoch)"
    assert np.isnan(e1["p"]) and np.isnan(e1["p_holm"]) and e1["n_seeds"] == 3


def test_questions_say_why_they_are_not_answered(tmp_path):
    root = tiny_grid(tmp_path / "falling", full_gain=-0.05)
    qs = load_spec(spec_of(root, QUESTIONS[:1])).questions
    t = report.questions_table(report.load_grid_results(root), qs)
    # one row per metric and level, as an answer would have: a primary question keeps its places in Holm's family
    assert len(t) == 4 and t["verdict"].str.startswith("not answered: full did not move (").all()
    assert sorted(zip(t["fraction"], t["metric"])) == sorted((f, m) for f in (0.5, 0.75)
                                                             for m in ("cross_div_clip", "retrieval_acc"))
    # A flat condition's noise can pass the per-eval test at one eval of six (here the last, by +0.0016): the gate
    # is permissive, but the levels sit at fractions of that gain, before LoRA's first eval, and are refused.
    root = tiny_grid(tmp_path / "flat", full_gain=0.0)
    t = report.questions_table(report.load_grid_results(root), qs)
    moved = report.moved_table(report.load_grid_results(root)).set_index("condition")
    assert moved.loc["full", "moved"] and moved.loc["full", "evals_passed"] == 1 and moved.loc["full", "gain"] < 0.01
    assert t["verdict"].str.startswith("not answered: level refused (lora: 3 of 3 runs").all()
    root = tmp_path / "partial"
    for seed in range(3):
        fake_cell(root, "lora", seed=seed)
    t = report.questions_table(report.load_grid_results(root), qs)
    assert t["verdict"].str.startswith("not answered: no runs of b (full) in this grid").all()


def test_rerunning_the_summary_gives_byte_identical_question_files(tmp_path):
    root = tiny_grid(tmp_path / "grid")
    spec = spec_of(root, QUESTIONS)
    first = report.write_summary(root, spec=spec)
    files = [root / "summary" / f"questions.{ext}" for ext in ("csv", "md")]
    assert set(files) <= set(first.files)
    before = [p.read_bytes() for p in files]
    for p in files:
        p.unlink()
    report.write_summary(root, spec=spec)
    assert [p.read_bytes() for p in files] == before
    csv = before[0].decode()
    assert csv.startswith("id,kind,question,a,b,where,at,fraction,reward_level,metric,n_seeds,mean_a,mean_b,")
    assert "\r" not in csv and "Holm p" in csv
    assert "Questions: pre-registered in" in (root / "summary" / "README.md").read_text()


def test_holm_keeps_unanswered_primaries_in_the_family_and_seeds_needed_is_given(tmp_path):
    root = tiny_grid(tmp_path / "grid")
    unlogged = {**QUESTIONS[1], "id": "E1", "metrics": ["judge_distinct_frac"]}  # not logged by fakes
    questions = [QUESTIONS[1], unlogged]
    t = report.questions_table(report.load_grid_results(root), load_spec(spec_of(root, questions)).questions)
    answered = t[t["id"] == "Q1 final"]
    assert t.loc[t["id"] == "E1", "verdict"].str.contains("not logged").all()
    family = answered["p"].tolist() + [1.0]  # E1's row counts as p = 1
    assert answered["p_holm"].tolist() == pytest.approx(report.holm(family)[:2])
    assert np.isnan(t.loc[t["id"] == "E1", "p_holm"]).all()
    # seeds for power 0.8 at Holm's strictest level (0.05 / 3), from the rows' own seed-wise differences
    assert (answered["seeds_needed"] >= 2).all() and t.loc[t["id"] == "E1", "seeds_needed"].isna().all()


def test_margins_turn_a_null_into_equivalence_where_the_data_allow(tmp_path):
    root = tiny_grid(tmp_path / "grid", full_gain=0.6)
    q = {"id": "F", "text": "judge at the last epoch", "a": {"mode": "lora"}, "b": {"mode": "full"},
         "metrics": ["judge_all", "reward_mean"], "at": "final", "margins": {"judge_all": 0.5, "reward_mean": 0.01}}
    t = report.questions_table(report.load_grid_results(root), load_spec(spec_of(root, [q])).questions)
    assert list(t.columns[-5:]) == ["margin", "equiv_low", "equiv_high", "equiv_p", "verdict"]
    judge, reward = (t[t["metric"] == m].iloc[0] for m in ("judge_all", "reward_mean"))
    assert judge["equiv_low"] > -0.5 and judge["equiv_high"] < 0.5 and judge["equiv_p"] < 0.05
    assert "; equivalent within +-0.5 (90% CI" in judge["verdict"]
    # lora gained 0.4 more reward than full: a difference, and no equivalence within 0.01
    assert reward["verdict"].startswith("answered: lora > full") and "not shown equivalent within +-0.01" in reward["verdict"]
    plain = report.questions_table(report.load_grid_results(root),
                                   load_spec(spec_of(root, [{k: v for k, v in q.items() if k != "margins"}])).questions)
    assert "margin" not in plain.columns and not plain["verdict"].str.contains("equivalent").any()


@pytest.mark.parametrize("margins, message", [
    ({"retrieval_acc": 0.1}, "not one of the question's metrics"),
    ({"judge_all": 0}, "must be a positive number"),
    ([0.1], "must be a mapping"),
])
def test_bad_margins_are_one_clear_line(tmp_path, margins, message):
    from ddpo_study.grid.errors import GridError

    q = {"id": "F", "text": "t", "a": {"mode": "lora"}, "b": {"mode": "full"}, "metrics": ["judge_all"],
         "at": "final", "margins": margins}
    with pytest.raises(GridError, match=message):
        load_spec(spec_of(tmp_path, [q]))


EXT_Q = {"id": "F", "text": "t", "a": {"mode": "lora"}, "b": {"mode": "full"}, "metrics": ["judge_all"],
         "at": "final", "primary": True, "min_seeds": 2, "margins": {"judge_all": 0.1}}


def test_a_spec_extension_rule_is_read_into_its_dataclass(tmp_path):
    spec = load_spec({**spec_of(tmp_path, [EXT_Q]), "extension": {"seeds": [0, 1, 2], "add": [3, 4],
                                                                   "planned_sd": {"judge_all": 0.16}}})
    ext = spec.extension
    assert (ext.seeds, ext.add, ext.fraction, ext.planned_sd) == ((0, 1, 2), (3, 4), 0.25, {"judge_all": 0.16})
    assert load_spec(spec_of(tmp_path, [EXT_Q])).extension is None


@pytest.mark.parametrize("extension, questions, message", [
    ({"seeds": [0, 1], "add": [3]}, [{**EXT_Q, "margins": {}}], "needs primary questions with 'margins'"),
    ({"seeds": [0, 9], "add": [3]}, [EXT_Q], r"seeds \[9\] are not in the seed axis"),
    ({"seeds": [0, 1], "add": [1, 3]}, [EXT_Q], r"seeds \[1\] are both base seeds and added seeds"),
    ({"seeds": [0, 1], "add": []}, [EXT_Q], "'add' must be a non-empty list"),
    ({"seeds": [0, 1], "add": [3], "fraction": 2}, [EXT_Q], "'fraction' must be a number in"),
    ({"seeds": [0, 1], "add": [3], "planned_sd": {"cross_div_clip": 0.1}}, [EXT_Q], "has no margin"),
    ({"seeds": [0, 1], "add": [3], "when": "now"}, [EXT_Q], "unknown key"),
])
def test_a_bad_extension_rule_is_one_clear_line(tmp_path, extension, questions, message):
    from ddpo_study.grid.errors import GridError

    with pytest.raises(GridError, match=f"^extension: .*{message}"):
        load_spec({**spec_of(tmp_path, questions), "extension": extension})


def _rule_row(qid, metric, fraction, n, low, high, margin, verdict="answered: ...", kind="primary"):
    return {"id": qid, "kind": kind, "metric": metric, "fraction": fraction, "n_seeds": n, "ci_low": low,
            "ci_high": high, "margin": margin, "verdict": verdict}


def test_the_extension_rule_sizes_each_primary_half_width_at_the_planned_seeds_against_its_margin():
    import math

    import pandas as pd
    from scipy import stats

    from ddpo_study.grid.questions import Extension
    from ddpo_study.report.questions import extension_rule

    nan = float("nan")
    refused = "not answered: level refused (lora: 12 of 12 runs reach it by their first eval)"
    table = pd.DataFrame([
        _rule_row("N1", "judge_all", 0.25, 12, -0.05, 0.17, 0.10),  # half-width 0.11 at 12 seeds > 0.10: extend
        _rule_row("N1", "cross_div_clip", 0.25, 12, 0.0, 0.05, 0.03),  # 0.025 <= 0.03
        _rule_row("N1", "judge_all", 0.5, 12, -1.0, 1.0, 0.10),  # another level: not read by the rule
        _rule_row("G1", "judge_all", 0.25, 0, nan, nan, 0.10, refused),  # no level answered: cannot be read
        _rule_row("N1 more", "retrieval_acc", 0.25, 12, -1.0, 1.0, nan, kind="exploratory"),
        # X1's 25% level refused: the rule reads its lowest answered level (not 0.75, and not a level with too few
        # seeds, whose CI exists but is no answer), and says which
        _rule_row("X1", "judge_all", 0.75, 12, -0.3, 0.3, 0.10),
        _rule_row("X1", "judge_all", 0.5, 12, -0.02, 0.14, 0.10),  # half-width 0.08
        _rule_row("X1", "judge_all", 0.4, 5, -0.9, 0.9, 0.10, "not answered: fewer than 8 seeds (5 common seeds)"),
        _rule_row("X1", "judge_all", 0.25, 0, nan, nan, 0.10, refused),
        # P2: 9 seeds reach the level; its SD is sized at the planned 12, not at the 9 observed
        _rule_row("P2", "cross_div_clip", 0.25, 9, 0.0, 0.08, 0.03),
    ])
    rule = Extension(seeds=tuple(range(6, 18)), add=(18, 19, 20), planned_sd={"cross_div_clip": 0.052})
    got = extension_rule(table, rule)
    assert list(zip(got["id"], got["metric"])) == [("N1", "judge_all"), ("N1", "cross_div_clip"), ("G1", "judge_all"),
                                                   ("X1", "judge_all"), ("P2", "cross_div_clip")]
    assert got["half_width"].iloc[:2].tolist() == pytest.approx([0.11, 0.025])
    assert got["extend"].iloc[0] is True and got["extend"].iloc[1] is False and pd.isna(got["extend"].iloc[2])
    assert got["question_extends"].tolist() == [True, True, False, False, True]
    assert got["fraction"].iloc[[0, 1, 3]].tolist() == [0.25, 0.25, 0.5] and pd.isna(got["fraction"].iloc[2])
    assert got["half_width"].iloc[3] == pytest.approx(0.08) and got["extend"].iloc[3] is False
    sd = 0.04 * math.sqrt(9) / stats.t.ppf(0.975, 8)  # the observed SD, from the 9-seed t interval
    p2 = got.iloc[4]
    assert p2["sd"] == pytest.approx(sd) and p2["planned_sd"] == 0.052 and p2["planned_seeds"] == 12
    assert p2["half_width"] == pytest.approx(stats.t.ppf(0.975, 11) * sd / math.sqrt(12))
    assert pd.isna(got["planned_sd"].iloc[0])
    assert extension_rule(table.drop(columns=["margin"]), rule).empty


def test_an_extension_is_read_on_the_base_seeds_and_reaches_only_its_own_question(tmp_path):
    from ddpo_study.grid.questions import Extension
    from ddpo_study.report.questions import question_seeds, read_questions

    root = tiny_grid(tmp_path / "grid", seeds=5)
    qs = [{"id": "A", "text": "judge at the end", "a": {"mode": "lora"}, "b": {"mode": "full"},
           "metrics": ["judge_all"], "at": "final", "primary": True, "margins": {"judge_all": 1e-6}},
          {"id": "A final", "text": "its companion", "a": {"mode": "lora"}, "b": {"mode": "full"},
           "metrics": ["reward_mean"], "at": "final"},
          {"id": "B", "text": "the other way round", "a": {"mode": "full"}, "b": {"mode": "lora"},
           "metrics": ["reward_mean"], "at": "final", "primary": True, "margins": {"reward_mean": 10.0}}]
    questions = load_spec(spec_of(root, qs, seeds=5)).questions
    rule = Extension(seeds=(0, 1, 2), add=(3, 4))
    assert question_seeds(questions, rule, {"A"}) == {"A": {0, 1, 2, 3, 4}, "A final": {0, 1, 2, 3, 4}, "B": {0, 1, 2}}
    df = report.load_grid_results(root)
    table, extension, seeds = read_questions(df, questions, rule)
    # the rule reads seeds 0-2 only; A's margin is tiny, so it fires; B's is wide, so B stays on the base seeds
    assert extension["n_seeds"].tolist() == [3, 3] and extension["question_extends"].tolist() == [True, False]
    assert table.groupby("id", sort=False)["n_seeds"].max().to_dict() == {"A": 5, "A final": 5, "B": 3}
    assert seeds == question_seeds(questions, rule, {"A"})
    # without a rule every question reads every seed, and the table is the plain one
    plain, none, _ = read_questions(df, questions)
    assert none is None and plain.equals(report.questions_table(df, questions))


def test_an_unanswered_primary_keeps_its_margin_and_counts_as_p_1_in_the_equivalence_family(tmp_path):
    root = tiny_grid(tmp_path / "grid", full_gain=0.6)
    q = {"id": "F", "text": "judge at the last epoch", "a": {"mode": "lora"}, "b": {"mode": "full"},
         "metrics": ["judge_all"], "at": "final", "primary": True, "margins": {"judge_all": 0.5}}
    unlogged = {**q, "id": "U", "metrics": ["judge_distinct_frac"], "margins": {"judge_distinct_frac": 0.1}}
    df = report.load_grid_results(root)
    alone = report.questions_table(df, load_spec(spec_of(root, [q])).questions)
    t = report.questions_table(df, load_spec(spec_of(root, [q, unlogged])).questions)
    u = t[t["id"] == "U"].iloc[0]
    assert u["margin"] == 0.1 and np.isnan(u["equiv_p"]) and u["verdict"].startswith("not answered")
    raw = alone["equiv_p"].iloc[0]  # a family of one: Holm leaves it as it is
    assert t[t["id"] == "F"]["equiv_p"].iloc[0] == pytest.approx(report.holm([raw, 1.0])[0])
