"""The study's questions, answered from saved results: each a contrast of two conditions pre-registered in the
grid spec (``questions:``, :class:`ddpo_study.grid.questions.Question`), or, for a spec without that section, the
default exploratory questions (:func:`default_questions`).

For each question and metric (and each matched reward level): the paired-by-seed difference a - b
(:func:`~ddpo_study.report.stats.paired_seed_ci`), its 95% CI and two-sided p; Holm's adjustment over every
row of the primary questions, unanswered rows counted as p = 1 (:func:`~ddpo_study.report.stats.holm`); the seeds
a paired test would need to detect the observed difference (:func:`~ddpo_study.report.stats.paired_seeds_needed`);
and a verdict, ``answered: ...`` or ``not answered: <reason>`` (a condition not in the grid, a metric not
logged, neither condition moved, a level refused, fewer than ``min_seeds`` common seeds). Matched levels:
:func:`~ddpo_study.report.levels.matched_levels`. A question with ``margins`` also gets a paired equivalence test
per metric (:func:`~ddpo_study.report.stats.paired_tost`, Holm over the primary rows with a margin): "equivalent
within +-m" or "not shown equivalent within +-m", so a null reads as a bound where the data allow it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import pandas as pd

from ..config import unused_keys
from ..grid.questions import DEFAULT_QUESTION_METRICS, Extension, Question, same_value
from ..grid.spec import REPO_ROOT, GridSpec, find_spec, load_spec
from .levels import crossing, matched_levels, read_after_epoch
from .results import _factors, _format_factor, _order_key, eval_rows, final_rows
from .stats import holm, paired_seed_ci, paired_seeds_needed, paired_tost, t_quantile

ALPHA = 0.05
COLUMNS = ["id", "kind", "question", "a", "b", "where", "at", "fraction", "reward_level", "metric", "n_seeds",
           "mean_a", "mean_b", "difference", "ci_low", "ci_high", "p", "p_holm", "seeds_needed", "verdict"]
#: a table with equivalence margins adds these before ``verdict`` (tables of grids without margins keep COLUMNS)
EQUIV_COLUMNS = ["margin", "equiv_low", "equiv_high", "equiv_p"]

# The default questions (a spec without ``questions:``): factor, the two sides, metrics and where they are read.
# Sides may be a value or "max"/"min" (numeric factors) or "most"/"fewest" (prompt sets). All exploratory.
DEFAULTS = (
    ("Q1", "Does LoRA lose more prompt-following diversity than full fine-tuning at matched reward?",
     "mode", "lora", "full", DEFAULT_QUESTION_METRICS, "matched"),
    ("Q2", "Do more training prompts keep more diversity at matched reward?",
     "prompt_set", "most", "fewest", DEFAULT_QUESTION_METRICS, "matched"),
    ("Q3", "Does the diversity penalty keep more diversity at matched reward?",
     "diversity_lambda", "max", "min", DEFAULT_QUESTION_METRICS, "matched"),
    ("Q3 cost", "What does the diversity penalty cost in final eval reward?",
     "diversity_lambda", "max", "min", ("reward_mean",), "final"),
    ("Q4", "Does progressive fine-tuning (full, then LoRA) keep more diversity than LoRA at matched reward?",
     "mode", "progressive", "lora", DEFAULT_QUESTION_METRICS, "matched"),
)


# ================================================================================================ which questions
def _reference(cells: pd.DataFrame, factor: str) -> Any:
    """A factor's baseline value: its most frequent value; ties go to LoRA, the fewest prompts, the smallest."""
    counts = cells[factor].value_counts(sort=False)
    best = counts[counts == counts.max()].index.tolist()
    if factor == "mode" and "lora" in best:
        return "lora"
    return sorted(best, key=lambda v: _order_key(factor, v))[0]


def _side(values: list, factor: str, side: Any) -> Any:
    ordered = sorted(values, key=lambda v: _order_key(factor, v))
    if not ordered:
        return side
    return ordered[-1] if side in ("max", "most") else ordered[0] if side in ("min", "fewest") else side


def _defaults(df: pd.DataFrame) -> list[tuple[str, str, Question | None, str]]:
    """(id, text, question or None, why not) for each default question, in the grid's reference setting."""
    factors = _factors(df)
    cells = df.drop_duplicates("cell")
    out = []
    for qid, text, factor, sa, sb, metrics, at in DEFAULTS:
        values = cells[factor].drop_duplicates().tolist() if factor in factors else []
        a, b = _side(values, factor, sa), _side(values, factor, sb)
        absent = [v for v in (a, b) if not any(same_value(v, x) for x in values)]
        if not values or a == b or absent:
            need = f"two values of {factor!r}" if not values or a == b else \
                f"runs with {', '.join(f'{factor}={v}' for v in absent)}"
            out.append((qid, text, None, f"not in this grid (needs {need})"))
            continue
        where = {f: _reference(cells, f) for f in factors if f != factor}
        out.append((qid, text, Question(id=qid, text=text, a={factor: a}, b={factor: b}, where=where,
                                        metrics=tuple(metrics), at=at), ""))
    return out


def default_questions(df: pd.DataFrame) -> list[Question]:
    """The default exploratory questions that the grid in ``df`` can ask (its factors have both sides)."""
    return [q for _, _, q, _ in _defaults(df) if q is not None]


def questions_for(root: str | Path,
                  spec: str | Path | dict | GridSpec | None = None) -> tuple[list[Question] | None, str]:
    """(the spec's questions or None, where they come from): ``spec``, or else the spec whose output_root is
    ``root`` (:func:`~ddpo_study.grid.spec.find_spec`). None: use :func:`default_questions`."""
    spec = load_spec(spec) if spec is not None else find_spec(root)
    if spec is None or spec.questions is None:
        where = "no grid spec found" if spec is None else f"{_rel(spec.source) or spec.name} has no 'questions:'"
        return None, f"default questions, all exploratory ({where})"
    return spec.questions, f"pre-registered in {_rel(spec.source) or spec.name} ('questions:')"


def _rel(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return Path(path).name


# ================================================================================================ answering
def select_runs(df: pd.DataFrame, cond: dict[str, Any]) -> pd.DataFrame:
    """The rows of the cells matching every ``key: value`` of ``cond`` (``variant`` = the grid variant's name; a
    config key the cell's mode or algorithm never reads is not checked)."""
    if df.empty:
        return df
    cells = df.drop_duplicates("cell")
    keep = np.ones(len(cells), dtype=bool)
    for key, value in cond.items():
        if key not in cells:
            return df.iloc[0:0]
        modes = cells["mode"] if "mode" in cells else pd.Series([""] * len(cells), index=cells.index)
        algorithms = cells["algorithm"] if "algorithm" in cells else pd.Series([None] * len(cells), index=cells.index)
        match = [same_value(v, value) or key in unused_keys(m, a)
                 for v, m, a in zip(cells[key], modes, algorithms)]
        keep &= np.asarray(match, dtype=bool)
    return df[df["cell"].isin(set(cells.loc[keep, "cell"]))]


def _label(cond: dict[str, Any]) -> str:
    return ", ".join(str(v) if k in ("variant", "condition") else _format_factor(k, v)
                     for k, v in cond.items()) or "all"


def _by_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    return rows.groupby("seed")[metric].mean() if len(rows) else pd.Series(dtype=float)


def _row(q: Question, metric: str, at: str, **kw) -> dict[str, Any]:
    base = {c: math.nan for c in COLUMNS + EQUIV_COLUMNS}
    base.update({"id": q.id, "kind": "primary" if q.primary else "exploratory", "question": q.text,
                 "a": _label(q.a), "b": _label(q.b), "where": _label(q.where), "at": at, "metric": metric,
                 "n_seeds": 0, "verdict": ""})
    # the margin belongs to the question, not to the answer: a refused or unmoved row keeps it, so it stays in the
    # equivalence family (as p = 1) and the extension rule can say that it could not be read there
    base["margin"] = q.margins.get(metric, math.nan)
    base.update(kw)
    return base


def _compare(q: Question, metric: str, at: str, va: pd.Series, vb: pd.Series, **kw) -> dict[str, Any]:
    res = paired_seed_ci(va, vb)
    common = sorted(set(va.dropna().index) & set(vb.dropna().index))
    row = _row(q, metric, at, n_seeds=res["n"], mean_a=res["mean_a"], mean_b=res["mean_b"],
               difference=res["difference"], ci_low=res["low"], ci_high=res["high"], p=res["p"], **kw)
    row["_differences"] = [float(va[s] - vb[s]) for s in common]  # for seeds_needed, dropped from the table
    if metric in q.margins:
        eq = paired_tost(va, vb, q.margins[metric])
        row.update(margin=q.margins[metric], equiv_low=eq["low"], equiv_high=eq["high"], equiv_p=eq["p"])
    if res["n"] < q.min_seeds:
        reach = " reaching this level" if at != "final epoch" else " with a final epoch"
        row.update(p=math.nan, equiv_p=math.nan, verdict=f"not answered: fewer than {q.min_seeds} seeds ({res['n']} common seeds "
                                       f"of a and b{reach})")
    return row


def evaluate_question(df: pd.DataFrame, q: Question, alpha: float = ALPHA) -> list[dict[str, Any]]:
    """The rows of one question (one per metric, and per level when read at matched reward); verdicts of rows
    still to be answered are left empty (:func:`questions_table` fills them after Holm's adjustment)."""
    runs_a, runs_b = select_runs(df, {**q.where, **q.a}), select_runs(df, {**q.where, **q.b})
    at0 = "final epoch" if q.at == "final" else "matched reward"
    for side, runs in (("a", runs_a), ("b", runs_b)):
        if runs.empty:
            cond = _label({**q.where, **getattr(q, side)})
            return _unread(q, f"not answered: no runs of {side} ({cond}) in this grid")
    rows = []
    missing = {m for m in q.metrics if m not in df or pd.concat([runs_a, runs_b])[m].isna().all()}
    if q.at == "final":
        fa, fb = final_rows(runs_a), final_rows(runs_b)
        for m in q.metrics:
            if m in missing:
                rows.append(_row(q, m, at0, verdict=f"not answered: {m} is not logged by these runs"))
            else:
                rows.append(_compare(q, m, at0, _by_seed(fa, m), _by_seed(fb, m)))
        return rows
    # the evals that logged every metric the question reads: the levels, their refusals and the readings then all
    # stand on the same evals (report.methods reads the same way)
    logged = [m for m in q.metrics if m not in missing]
    ev_a, ev_b = (eval_rows(runs).dropna(subset=logged) for runs in (runs_a, runs_b))
    levels = matched_levels(ev_a, ev_b, (_label(q.a), _label(q.b)), q.fractions, alpha)
    if levels.reason:
        return _unread(q, f"not answered: {levels.reason}")
    smaller = min(g.gain for g in levels.gains)
    for level in levels.levels:
        at = f"reward {level.value:.4g} ({level.fraction:.0%} of the smaller gain, {smaller:.3g})"
        for m in q.metrics:
            kw = {"fraction": level.fraction, "reward_level": level.value}
            if level.refused:
                rows.append(_row(q, m, at, verdict=f"not answered: level refused ({level.refused})", **kw))
            elif m in missing:
                rows.append(_row(q, m, at, verdict=f"not answered: {m} is not logged by these runs", **kw))
            else:
                va, vb = (_values_at(ev, level.value, m) for ev in (ev_a, ev_b))
                rows.append(_compare(q, m, at, va, vb, **kw))
    return rows


def seeds_read(df: pd.DataFrame, qid: str, seeds: dict[str, Collection[int]] | None) -> pd.DataFrame:
    """The rows of ``df`` that question ``qid`` reads: its seeds in ``seeds`` (:func:`question_seeds`), or all."""
    return df if seeds is None or qid not in seeds else df[df["seed"].isin(seeds[qid])]


def _unread(q: Question, verdict: str) -> list[dict[str, Any]]:
    """The rows of a question that cannot be read at all: as many as an answer has (one per metric, and per level
    at matched reward), so a primary question keeps all its places in Holm's families."""
    if q.at == "final":
        return [_row(q, m, "final epoch", verdict=verdict) for m in q.metrics]
    return [_row(q, m, f"matched reward ({f:.0%} of the smaller gain)", fraction=f, verdict=verdict)
            for f in q.fractions for m in q.metrics]


def _values_at(ev: pd.DataFrame, level: float, metric: str) -> pd.Series:
    """seed -> the run's ``metric`` where it first reaches ``level`` (runs that never do, or only before their
    first eval after their start epoch, left out)."""
    out = {}
    for _, run in ev.groupby("cell", sort=False):
        value, _, lower = crossing(run, level, metric)
        if np.isfinite(value) and lower > read_after_epoch(run):
            out.setdefault(run["seed"].iloc[0], []).append(value)
    return pd.Series({s: float(np.mean(v)) for s, v in out.items()}, dtype=float)


def _verdict(row: dict[str, Any], alpha: float) -> str:
    p = row["p_holm"] if row["kind"] == "primary" else row["p"]
    ptext = f"Holm p {p:.2g}" if row["kind"] == "primary" else f"p {p:.2g}, unadjusted"
    ci = f"95% CI {row['ci_low']:.3g} to {row['ci_high']:.3g}; {ptext}"
    if p < alpha:
        sign = "<" if row["difference"] < 0 else ">"
        text = f"answered: {row['a']} {sign} {row['b']} by {abs(row['difference']):.3g} ({ci})"
    else:
        text = f"answered: no difference detected ({ci})"
    return text + _equivalence(row, alpha)


def _equivalence(row: dict[str, Any], alpha: float) -> str:
    """The TOST clause of a verdict, for a row with a margin: equivalent within +-m, or not shown to be."""
    m = row.get("margin")
    if m is None or not np.isfinite(m) or not np.isfinite(row.get("equiv_p", math.nan)):
        return ""
    kind = "Holm " if row["kind"] == "primary" else ""
    ci = f"90% CI {row['equiv_low']:.3g} to {row['equiv_high']:.3g}, TOST {kind}p {row['equiv_p']:.2g}"
    if row["equiv_p"] < alpha:
        return f"; equivalent within +-{m:.3g} ({ci})"
    return f"; not shown equivalent within +-{m:.3g} ({ci})"


def questions_table(df: pd.DataFrame, questions: Sequence[Question] | None = None,
                    alpha: float = ALPHA, seeds: dict[str, Collection[int]] | None = None) -> pd.DataFrame:
    """One row per question x metric (x matched level): the :data:`COLUMNS`, in the questions' order.

    ``questions``: the spec's (:func:`questions_for`); None: the default questions, with a "not in this grid" row
    for each one the grid cannot ask. ``seeds``: question id -> the seeds it reads (:func:`question_seeds`; a
    question not named reads every seed)."""
    if df.empty:
        return pd.DataFrame(columns=COLUMNS)  # (no rows, so no margins either)
    rows = []
    if questions is None:
        for qid, text, q, why in _defaults(df):
            if q is None:
                placeholder = Question(id=qid, text=text, a={}, b={})
                rows.append({**_row(placeholder, "", ""), "a": "", "b": "", "where": "",
                             "verdict": f"not answered: {why}"})
            else:
                rows += evaluate_question(df, q, alpha)
    else:
        for q in questions:
            rows += evaluate_question(seeds_read(df, q.id, seeds), q, alpha)
    # Holm over every pre-registered primary row: one that could not be answered stays in the family as p = 1,
    # so missing levels never make the others' adjustment milder than the spec's design.
    family = [i for i, r in enumerate(rows) if r["kind"] == "primary"]
    for i, adj in zip(family, holm([rows[i]["p"] if np.isfinite(rows[i]["p"]) else 1.0 for i in family])):
        if not rows[i]["verdict"] and np.isfinite(rows[i]["p"]):
            rows[i]["p_holm"] = adj
    # The equivalence claims are a second family: Holm over the primary rows that have a margin (p = 1 when the
    # row could not be answered), so "equivalent" is as strict a claim as "different".
    eq_family = [i for i in family if np.isfinite(rows[i].get("margin", math.nan))]
    adjusted = holm([rows[i]["equiv_p"] if np.isfinite(rows[i]["equiv_p"]) and not rows[i]["verdict"] else 1.0
                     for i in eq_family])
    for i, adj in zip(eq_family, adjusted):
        if np.isfinite(rows[i]["equiv_p"]):
            rows[i]["equiv_p"] = adj
    for r in rows:
        # seeds a paired t-test would need for power 0.8 if the observed difference were the true one, at the
        # row's own level (primary: Holm's strictest, alpha / family size)
        level = alpha / max(1, len(family)) if r["kind"] == "primary" else alpha
        r["seeds_needed"] = paired_seeds_needed(r.pop("_differences", []), alpha=level)
        if not r["verdict"]:
            r["verdict"] = _verdict(r, alpha) if np.isfinite(r["p"]) else "not answered: no p-value"
    columns = COLUMNS
    if any(np.isfinite(r["margin"]) for r in rows):
        columns = COLUMNS[:-1] + EQUIV_COLUMNS + COLUMNS[-1:]
    return pd.DataFrame(rows, columns=columns)


# ================================================================================================ extension rule
EXTENSION_COLUMNS = ["id", "metric", "fraction", "n_seeds", "sd", "planned_sd", "planned_seeds", "half_width", "target",
                     "extend", "question_extends"]


def extension_rule(table: pd.DataFrame, rule: Extension) -> pd.DataFrame:
    """A spec's seed-extension rule (:class:`~ddpo_study.grid.questions.Extension`, study v3's POWER note), read
    from a questions table of its base seeds (:func:`read_questions` builds it).

    For each primary question and metric with a margin: the observed paired SD (``sd``, from the row's t interval)
    at the matched level ``rule.fraction``, the pilot's SD (``planned_sd``) beside it, and the 95% CI half-width
    that SD gives at the planned number of seeds (``planned_seeds`` = the base seeds; ``t(n-1) sd / sqrt(n)``)
    against the margin (``target``). ``extend``: True where the half-width exceeds the target, False where it does
    not, NaN where the rule cannot be read (no answered level). ``question_extends``: True where any metric of the
    question extends; a question that cannot be read is not extended.

    Where the ``rule.fraction`` level is not answered (refused: one condition reaches it by its first eval; or
    fewer than ``min_seeds`` seeds reach it) the rule reads the lowest other level that is answered and names it in
    ``fraction`` (fixed 2026-12-07 for study v3: at a refused level no SD exists to size the seeds with).
    """
    if "margin" not in table:
        return pd.DataFrame(columns=EXTENSION_COLUMNS)
    rows = table[(table["kind"] == "primary") & table["margin"].notna()]
    out = []
    for (qid, metric), g in rows.groupby(["id", "metric"], sort=False):
        answered = [r for _, r in g.iterrows() if str(r["verdict"]).startswith("answered")]
        answered.sort(key=lambda r: (not np.isclose(float(r["fraction"]), rule.fraction), float(r["fraction"])))
        row = {"id": qid, "metric": metric, "fraction": math.nan, "n_seeds": 0, "sd": math.nan,
               "planned_sd": rule.planned_sd.get(metric, math.nan), "planned_seeds": len(rule.seeds),
               "half_width": math.nan, "target": float(g["margin"].iloc[0]), "extend": math.nan}
        if answered:
            r = answered[0]
            n = int(r["n_seeds"])
            sd = (r["ci_high"] - r["ci_low"]) / 2 * math.sqrt(n) / t_quantile(n - 1)  # the t interval, inverted
            half = t_quantile(len(rule.seeds) - 1) * sd / math.sqrt(len(rule.seeds))
            row.update(fraction=float(r["fraction"]), n_seeds=n, sd=sd, half_width=half,
                       extend=bool(half > row["target"]))
        out.append(row)
    fired = {row["id"] for row in out if row["extend"] is True}
    return pd.DataFrame([{**row, "question_extends": row["id"] in fired} for row in out], columns=EXTENSION_COLUMNS)


def question_seeds(questions: Sequence[Question], rule: Extension, fired: Collection[str]) -> dict[str, set[int]]:
    """question id -> the seeds it reads: the base seeds, and the added ones where a question whose rule fired
    (``fired``: ids) asks about the same two conditions (its companions: "N1 more", "N1 final"). So an extension
    run for N1 does not leak into X1, which shares one of N1's conditions but did not ask for more seeds."""
    def conditions(q: Question) -> tuple:
        return tuple(sorted((k, str(v)) for k, v in {**q.where, **q.a}.items())), \
            tuple(sorted((k, str(v)) for k, v in {**q.where, **q.b}.items()))

    extended = {conditions(q) for q in questions if q.id in fired}
    return {q.id: set(rule.seeds) | (set(rule.add) if conditions(q) in extended else set()) for q in questions}


def read_questions(df: pd.DataFrame, questions: Sequence[Question] | None, rule: Extension | None = None,
                   alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, set[int]] | None]:
    """(the questions table, the extension rule's table or None, question id -> seeds read or None).

    Without a rule every question reads every seed. With one, the rule is read on the base seeds only (so the
    record of why an extension ran never changes once its seeds are in), then each question reads its own seeds
    (:func:`question_seeds`)."""
    if rule is None or questions is None:
        return questions_table(df, questions, alpha), None, None
    base = questions_table(df[df["seed"].isin(rule.seeds)], questions, alpha)
    extension = extension_rule(base, rule)
    seeds = question_seeds(questions, rule, set(extension.loc[extension["question_extends"], "id"]))
    return questions_table(df, questions, alpha, seeds=seeds), extension, seeds
