"""A question re-read with another grid's runs of the same recipe pooled in (study v3's P2 with study v2's seeds
0-5, spec key ``pool_with``): a secondary reading, exploratory, with no Holm adjustment.

A run of the other grid joins a side of the question when its config equals the config of that side's runs here
but for the seed and what no run of its mode and algorithm reads (:func:`recipe`), so only runs of one recipe are
pooled; the seeds must differ (a seed in both grids would pair a run with a re-run of itself). Keys a config of
an older run lacks take their defaults (``algorithm`` came with DiffusionNFT; a run without it is DDPO). When
nothing joins, or the pooling is refused, the rows say so ("not answered: ...") and the summary goes on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import DDPOConfig, unused_keys
from ..grid.questions import Question
from ..grid.spec import _display_path
from ..rundir import read_config
from .questions import questions_table, seeds_read, select_runs
from .results import NON_FACTORS, load_grid_results

_FIELDS = {f.name for f in dataclasses.fields(DDPOConfig)}


def _value(v: Any) -> Any:
    """One spelling per value: YAML's 5 and 5.0 are one learning rate."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def recipe(config: dict[str, Any]) -> tuple:
    """A run's config with defaults filled in, less its seed, its plumbing and the keys it never reads."""
    full = DDPOConfig.from_dict({k: v for k, v in config.items() if k in _FIELDS}).to_dict()
    drop = {*NON_FACTORS, *unused_keys(full["mode"], full.get("algorithm"))}
    return tuple(sorted((k, repr(_value(v))) for k, v in full.items() if k not in drop))


def pooled_frame(df: pd.DataFrame, q: Question, other: str | Path) -> tuple[pd.DataFrame, int]:
    """(``df`` with the runs of ``other`` that share a side's recipe, labelled as that side; how many joined)."""
    joined = []
    theirs = load_grid_results(other, finished_only=True)
    if theirs.empty:
        return df, 0
    recipes = {}
    for side in (q.a, q.b):
        cond = {**q.where, **side}
        for cell_dir in select_runs(df, cond)["cell_dir"].drop_duplicates():
            key = recipe(read_config(cell_dir))
            if recipes.get(key, cond) != cond:
                raise ValueError(f"both sides of {q.id} run one recipe ({_display_path(Path(cell_dir))}): a pooled "
                                 "run could join either")
            recipes[key] = cond
    ours = set(df["seed"].dropna())
    for cell, run in theirs.groupby("cell", sort=False):
        cond = recipes.get(recipe(read_config(run["cell_dir"].iloc[0])))
        if cond is None:
            continue
        if set(run["seed"]) & ours:
            raise ValueError(f"{_display_path(Path(other))}/{cell}: seed {run['seed'].iloc[0]} is in both grids; "
                             "pooling needs fresh seeds")
        run = run.assign(**cond, cell=f"{Path(other).name}/{cell}")
        joined.append(run)
    if not joined:
        return df, 0
    return pd.concat([df, *joined], ignore_index=True, sort=False), len(joined)


def pooled_table(df: pd.DataFrame, questions: list[Question], pool_with: dict[str, Path],
                 seeds: dict[str, set[int]] | None = None) -> pd.DataFrame:
    """The questions named in ``pool_with`` (id -> another grid's folder), each re-read on the pooled runs as a
    secondary, exploratory question ``"<id> pooled"``; its text says what joined. ``seeds``: question id -> the
    seeds of this grid it reads (a spec's extension rule, :func:`~.questions.question_seeds`; default: all)."""
    rows = []
    by_id = {q.id: q for q in questions}
    for qid, other in pool_with.items():
        q = by_id[qid]
        own = seeds_read(df, qid, seeds)
        try:
            pooled, n = pooled_frame(own, q, other)
            why = "" if n else f"no finished run of either side's recipe in {_display_path(Path(other))}"
        except ValueError as err:  # an exploratory table must not stop the summary: its rows say why
            pooled, n, why = own, 0, str(err)
        # its levels are fractions of the pooled runs' gains, so they need not be the question's own levels
        text = (f"{q.text} Secondary reading: pooled with {n} runs of the same recipe from {Path(other).name}; "
                f"matched levels of the pooled gains.")
        table = questions_table(pooled, [dataclasses.replace(q, id=f"{qid} pooled", text=text, primary=False)])
        if why:  # no pooled reading: the rows keep what was asked, no numbers
            numbers = [c for c in table if c not in ("id", "kind", "question", "a", "b", "where", "at", "metric")]
            table[numbers] = float("nan")
            table["n_seeds"], table["verdict"] = 0, f"not answered: {why}"
        rows.append(table)
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
