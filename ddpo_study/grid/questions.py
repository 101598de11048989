"""A spec's pre-registered questions: :class:`Question` (one contrast, written before the grid runs) and
:func:`parse_questions`, which reads and validates the ``questions:`` section against the grid's axes.

How a question is answered is :mod:`ddpo_study.report.questions`; :func:`same_value` is also how the spec compares
axis values (``exclude``, ``keep_*``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import DDPOConfig
from .errors import GridError

#: Metrics a question may compare (columns of metrics.csv).
QUESTION_METRICS = ("cross_div_clip", "retrieval_acc", "judge_all", "judge_distinct", "judge_distinct_frac",
                    "reward_mean", "within_div_clip", "cross_div_pixel", "within_div_pixel", "vendi_clip",
                    "clip_score", "dist_base_clip", "dist_base_pixel", "param_dist")
#: The study's diversity metrics: cross-prompt CLIP distance, prompt retrieval, the judge's all-correct rate and
#: its number of distinct readings across prompts at one seed.
DEFAULT_QUESTION_METRICS = ("cross_div_clip", "retrieval_acc", "judge_all", "judge_distinct")
QUESTION_KEYS = ("id", "text", "a", "b", "where", "metrics", "at", "fractions", "primary", "min_seeds", "margins")
QUESTION_AT = ("matched", "final")
SEED_KEY = "seed"


@dataclass(frozen=True)
class Question:
    """A pre-registered contrast: condition ``a`` vs condition ``b`` (config/axis values, ``where`` shared by both),
    read on ``metrics`` at matched reward levels (``fractions`` of the smaller gain) or at the final epoch."""

    id: str
    text: str
    a: dict[str, Any]
    b: dict[str, Any]
    where: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = DEFAULT_QUESTION_METRICS
    at: str = "matched"
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    primary: bool = False
    min_seeds: int = 3
    #: metric -> equivalence margin m: beside the difference test, a paired TOST of |a - b| < m (fixed in advance)
    margins: dict[str, float] = field(default_factory=dict)


def same_value(x: Any, y: Any) -> bool:
    """Axis / config values are equal: as numbers when both read as numbers (YAML's 0 vs 0.0 vs "0.0"),
    else as strings."""
    if isinstance(x, bool) or isinstance(y, bool):
        return str(x).lower() == str(y).lower()
    try:
        return math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(x) == str(y)


def parse_questions(raw: Any, axes: dict[str, list[Any]], variants: list[str] | None = None,
                    fixed_seed: Any = None) -> list[Question]:
    """The ``questions:`` section of a spec, validated against the grid's axes (before ``--quick``).

    A list of mappings, written before the grid runs::

        questions:
          - id: Q1                                   # unique
            text: Does LoRA lose more cross-prompt diversity than full fine-tuning at matched reward?
            a: {mode: lora}                          # the two conditions: axis values (or {variant: name})
            b: {mode: full}
            where: {prompt_set: toy_30, diversity_lambda: 0.0}   # values both share
            metrics: [cross_div_clip, retrieval_acc, judge_all, judge_distinct]   # default: these four
            at: matched                              # matched (reward levels) | final (last epoch)
            fractions: [0.5]                         # matched only; default [0.25, 0.5, 0.75]
            primary: true                            # Holm over all primary rows; default false (exploratory)
            min_seeds: 6                             # fewer common seeds: "not answered"; default 3
            margins: {judge_all: 0.10}               # optional: equivalence margins (paired TOST) per metric

    ``a`` and ``b`` name the same keys with different values; every axis with several values (seed excepted)
    must be named in ``a``/``b`` or ``where``, so a question never pools settings silently. A primary question
    needs at least ``min_seeds`` seeds in the grid. ``variants``: the variants' names. One :class:`GridError` line
    names the question and the fault.
    """
    if not isinstance(raw, list):
        raise GridError("'questions' must be a list of mappings (id, text, a, b, where, metrics, at, ...)")
    known = {k: list(v) for k, v in axes.items() if k != SEED_KEY}
    if variants:
        known["variant"] = list(variants)
    seeds = axes.get(SEED_KEY, [fixed_seed] if fixed_seed is not None else [DDPOConfig.seed])
    out: list[Question] = []
    for i, q in enumerate(raw):
        out.append(_parse_question(i, q, known, len(seeds), {x.id for x in out}))
    return out


def _parse_question(i: int, q: Any, known: dict[str, list[Any]], num_seeds: int, taken: set[str]) -> Question:
    """One entry of ``questions:``; ``known``: the axes a condition may name; ``taken``: the ids before it."""
    if not isinstance(q, dict):
        raise GridError(f"question #{i}: must be a mapping, got {q!r}")
    qid = str(q.get("id") or "").strip()
    where_msg = f"question {qid!r}" if qid else f"question #{i}"

    def fail(msg: str) -> GridError:
        return GridError(f"{where_msg}: {msg}")

    unknown = [k for k in q if k not in QUESTION_KEYS]
    if unknown:
        raise fail(f"unknown key(s) {unknown} (allowed: {list(QUESTION_KEYS)})")
    if not qid:
        raise fail("needs an 'id'")
    if qid in taken:
        raise fail("duplicate id")
    if not str(q.get("text") or "").strip():
        raise fail("needs a 'text' (the question, in words)")
    conds = _conditions(q, known, fail)
    at, fractions = _reading(q, fail)
    primary, min_seeds = _replication(q, num_seeds, fail)
    metrics = _metrics(q, fail)
    return Question(id=qid, text=str(q["text"]).strip(), a=conds["a"], b=conds["b"], where=conds["where"],
                    metrics=metrics, at=at, fractions=fractions, primary=primary, min_seeds=min_seeds,
                    margins=_margins(q, metrics, fail))


def _margins(q: dict, metrics: tuple[str, ...], fail: Callable[[str], GridError]) -> dict[str, float]:
    """``margins``: metric -> a positive number, for metrics the question reads."""
    raw = q.get("margins", {})
    if not isinstance(raw, dict):
        raise fail("'margins' must be a mapping of metric -> equivalence margin")
    out = {}
    for metric, m in raw.items():
        if metric not in metrics:
            raise fail(f"margins: {metric!r} is not one of the question's metrics {list(metrics)}")
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0:
            raise fail(f"margins: {metric} must be a positive number, got {m!r}")
        out[metric] = float(m)
    return out


def _conditions(q: dict, known: dict[str, list[Any]], fail: Callable[[str], GridError]) -> dict[str, dict]:
    """``a``, ``b`` and ``where``: axis values of this grid; ``a`` and ``b`` differ, and no axis is pooled."""
    conds = {}
    for side in ("a", "b", "where"):
        value = q.get(side, {} if side == "where" else None)
        if not isinstance(value, dict) or (side != "where" and not value):
            raise fail(f"{side!r} must be a{' non-empty' if side != 'where' else ''} mapping of axis -> value")
        for key, v in value.items():
            if key == SEED_KEY:
                raise fail(f"{side}: 'seed' is the replicate, not a condition")
            if key not in known:
                raise fail(f"{side}: {key!r} is not an axis of this grid (axes: {sorted(known)})")
            if not any(same_value(v, allowed) for allowed in known[key]):
                raise fail(f"{side}: {key}={v!r} is not a value of axis {key!r} ({known[key]})")
        conds[side] = dict(value)
    if set(conds["a"]) != set(conds["b"]):
        raise fail(f"'a' and 'b' must name the same keys ({sorted(conds['a'])} vs {sorted(conds['b'])})")
    if all(same_value(conds["a"][k], conds["b"][k]) for k in conds["a"]):
        raise fail("'a' and 'b' are the same condition")
    both = sorted(set(conds["a"]) & set(conds["where"]))
    if both:
        raise fail(f"{both} both in 'a'/'b' and in 'where'")
    loose = [k for k, v in known.items() if len(v) > 1 and k not in conds["a"] and k not in conds["where"]]
    if loose:
        raise fail(f"axis/axes {loose} have several values: set them in 'where' (or in 'a'/'b')")
    return conds


def _metrics(q: dict, fail: Callable[[str], GridError]) -> tuple[str, ...]:
    metrics = q.get("metrics", list(DEFAULT_QUESTION_METRICS))
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics:
        raise fail("'metrics' must be a non-empty list")
    bad = [m for m in metrics if m not in QUESTION_METRICS]
    if bad:
        raise fail(f"unknown metric(s) {bad} (known: {list(QUESTION_METRICS)})")
    return tuple(metrics)


def _reading(q: dict, fail: Callable[[str], GridError]) -> tuple[str, tuple[float, ...]]:
    """Where the question is read: ``at`` and, at matched reward, the ``fractions`` of the smaller gain."""
    at = q.get("at", "matched")
    if at not in QUESTION_AT:
        raise fail(f"'at' must be one of {list(QUESTION_AT)}, got {at!r}")
    fractions = q.get("fractions", list(Question.fractions))
    if at == "final" and "fractions" in q:
        raise fail("'fractions' is for at: matched only")
    if not isinstance(fractions, list) or not fractions or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in fractions):
        raise fail(f"'fractions' must be a non-empty list of numbers in (0, 1], got {fractions!r}")
    return at, tuple(float(f) for f in fractions)


def _replication(q: dict, num_seeds: int, fail: Callable[[str], GridError]) -> tuple[bool, int]:
    """``primary`` and ``min_seeds``; a primary question needs that many seeds in the grid."""
    primary = q.get("primary", False)
    if not isinstance(primary, bool):
        raise fail(f"'primary' must be true or false, got {primary!r}")
    min_seeds = q.get("min_seeds", Question.min_seeds)
    if not isinstance(min_seeds, int) or isinstance(min_seeds, bool) or min_seeds < 2:
        raise fail(f"'min_seeds' must be an integer >= 2, got {min_seeds!r}")
    if primary and num_seeds < min_seeds:
        raise fail(f"primary with min_seeds {min_seeds}, but the grid has {num_seeds} seed(s)")
    return primary, min_seeds


# ================================================================================================ seed extension
EXTENSION_KEYS = ("seeds", "add", "fraction", "planned_sd")


@dataclass(frozen=True)
class Extension:
    """A spec's seed-extension rule, fixed before its last base seed runs (study v3's POWER note): each primary
    question is read on ``seeds``; where the observed paired SD, at ``len(seeds)`` seeds, gives a 95% CI
    half-width above a metric's margin, the seeds ``add`` are run for that question's conditions (once)."""

    #: the base seeds the rule is read on (the spec's replicates before any extension)
    seeds: tuple[int, ...]
    #: the seeds added to the conditions of a question whose rule fires
    add: tuple[int, ...]
    #: the matched level read first (another level is read where this one has no answer)
    fraction: float = 0.25
    #: metric -> the paired SD the power calculation assumed (the write-up says where the observed one exceeds it)
    planned_sd: dict[str, float] = field(default_factory=dict)


def parse_extension(raw: Any, seed_axis: list[Any], questions: list[Question] | None) -> Extension:
    """The ``extension:`` section of a spec::

        extension:
          seeds: [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]   # the base seeds (in the seed axis)
          add: [18, 19, 20]                                     # fresh seeds, run only for a question that needs them
          fraction: 0.25                                        # optional, default 0.25
          planned_sd: {judge_all: 0.16, cross_div_clip: 0.052}  # optional: the pilot's paired SDs

    It needs primary questions with margins (the half-width targets). One :class:`GridError` line names the fault.
    """
    def fail(msg: str) -> GridError:
        return GridError(f"extension: {msg}")

    if not isinstance(raw, dict):
        raise fail(f"must be a mapping ({', '.join(EXTENSION_KEYS)}), got {raw!r}")
    unknown = [k for k in raw if k not in EXTENSION_KEYS]
    if unknown:
        raise fail(f"unknown key(s) {unknown} (allowed: {list(EXTENSION_KEYS)})")
    targets = {m for q in questions or [] if q.primary for m in q.margins}
    if not targets:
        raise fail("needs primary questions with 'margins' (the half-widths it is read against)")
    seeds, add = (_seed_list(raw.get(key), key, fail) for key in ("seeds", "add"))
    outside = [s for s in seeds if not any(same_value(s, v) for v in seed_axis)]
    if outside:
        raise fail(f"seeds {outside} are not in the seed axis {seed_axis}")
    both = sorted(set(seeds) & set(add))
    if both:
        raise fail(f"seeds {both} are both base seeds and added seeds")
    fraction = raw.get("fraction", Extension.fraction)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise fail(f"'fraction' must be a number in (0, 1], got {fraction!r}")
    planned = raw.get("planned_sd") or {}
    if not isinstance(planned, dict):
        raise fail(f"'planned_sd' must be a mapping of metric -> SD, got {planned!r}")
    for metric, sd in planned.items():
        if metric not in targets:
            raise fail(f"planned_sd: {metric!r} has no margin in a primary question ({sorted(targets)})")
        if isinstance(sd, bool) or not isinstance(sd, (int, float)) or not sd > 0:
            raise fail(f"planned_sd: {metric} must be a positive number, got {sd!r}")
    return Extension(seeds=seeds, add=add, fraction=float(fraction),
                     planned_sd={str(k): float(v) for k, v in planned.items()})


def _seed_list(raw: Any, key: str, fail: Callable[[str], GridError]) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise fail(f"{key!r} must be a non-empty list of integer seeds, got {raw!r}")
    if len(set(raw)) != len(raw):
        raise fail(f"{key!r} repeats a seed: {raw}")
    return tuple(raw)
