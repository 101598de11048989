"""Figures and tables of the study, computed from SAVED results only (``config.json``, ``metrics.csv``, eval npz).

Nothing here trains or samples, so every figure can be regenerated from the output folders. All functions are
pure: they take a results frame or a folder and return matplotlib ``Figure`` objects (created without pyplot,
so nothing is shown or kept alive behind the caller's back) or pandas ``DataFrame``\\ s.

* One cell (one run): :func:`cell_figures` (reward / diversity curves, PPO statistics, eval image grids at
  epoch 0 / middle / end whose rows are seeds, so one row shows *different prompts at the same seed*) and
  :func:`cell_table` (the final numbers against the base model).
* A grid: :func:`load_grid_results` (all cells' metric rows with their config columns and a ``condition``
  label built from the config keys that vary, seed excepted), summary figures (:func:`fig_reward_curves`,
  :func:`fig_diversity_curves`, :func:`fig_frontier`, :func:`fig_final_bars`, :func:`fig_montage`) and tables
  (:func:`final_table`, :func:`matched_reward_table`, :func:`learning_table`: each run's paired reward gain over
  the base model in standard errors clustered by prompt), the questions (:func:`questions_table`: the spec's
  pre-registered contrasts, paired by seed, Holm over the primaries, a verdict each), and :func:`write_summary`,
  which saves them all under ``<root>/summary/`` reproducibly (same inputs, same bytes).

Modules: ``results`` (reading run folders, condition labels, eval rows and images), ``stats`` (intervals over
seeds, paired-by-seed contrasts, the clustered SE of a paired gain, Holm), ``levels`` (matched-reward levels,
per reward, after both conditions moved; :func:`moved_table`, each condition's reading of the "moved" rule),
``questions`` (the spec's questions and their verdicts), ``tables`` (grid tables), ``frontier`` (every condition's final reward gain and diversity with seed CIs, and its
diversity difference from a reference at matched reward: the remedies side by side), ``plotting`` (style, reproducible saving), ``figures`` (grid figures, image layout), ``cell``
(one run's figures and tables), ``summary`` (writing ``<root>/summary/``, directly or through the summary
notebook: :func:`run_summary`; Markdown, notebook setup), ``continued`` (a run continued from
another run's adapter, ``init_lora``: the joined curve and its reads). Everything
is re-exported here: use ``report.<name>``; except ``figures_index`` (the ``figures`` command: every figure the
README and docs embed, and what rebuilds it), which is used as a module.
"""

from ..rundir import eval_epochs
from .cell import (
    CELL_TABLE_METRICS,
    as_jpeg,
    cell_figures,
    cell_table,
    config_diff,
    fig_cell_curves,
    fig_cell_images,
    fig_cell_ppo,
)
from .continued import continued_table, fig_continued, join_curves, joined_curves, original_of
from .figures import (
    fig_diversity_curves,
    fig_final_bars,
    fig_frontier,
    fig_montage,
    fig_reward_curves,
    image_axis,
    tile,
    wrap_label,
)
from .frontier import FRONTIER_METRICS, MATCHED_METRICS, fig_frontier_points, final_gains, frontier_table
from .levels import (
    MATCH_FRACTIONS,
    ConditionGain,
    Level,
    MatchedLevels,
    condition_gain,
    crossing,
    levels_by_reward,
    matched_levels,
    matched_runs,
    moved_table,
    read_after_epoch,
    reward_levels,
)
from .plain import plain_summary
from .plotting import PDF_METADATA, PNG_METADATA, new_figure, save_figure, style, styled
from .questions import (
    ALPHA,
    DEFAULTS,
    default_questions,
    evaluate_question,
    questions_for,
    questions_table,
    select_runs,
)
from .results import (
    FINAL_METRICS,
    LABELS,
    NON_FACTORS,
    SHORT,
    VALUE_ONLY,
    cell_eval_images,
    condition_factors,
    conditions,
    eval_rows,
    final_rows,
    find_cells,
    load_grid_results,
    read_cell,
)
from .stats import (
    aggregate,
    clustered_mean_se,
    holm,
    mean_ci,
    one_sided_gain_p,
    paired_gain,
    paired_seed_ci,
    t_quantile,
    welch_ci,
)
from .summary import (
    SUMMARY_NOTEBOOK,
    Summary,
    notebook_setup,
    run_summary,
    summary_figures,
    summary_tables,
    to_markdown,
    write_summary,
)
from .tables import (
    PLATEAU_LATE_FRACTION,
    PLATEAU_LATE_GAIN,
    cells_table,
    final_table,
    first_flat_epoch,
    largest_fall,
    late_gain_fraction,
    learning_table,
    matched_reward_table,
    paired_reward_gain,
    peak_and_rise_after,
    run_collapse,
    step_kl_gmean,
)

__all__ = [
    # continued runs
    "continued_table", "fig_continued", "join_curves", "joined_curves", "original_of",
    # the opening paragraph
    "plain_summary",
    # results
    "FINAL_METRICS", "LABELS", "NON_FACTORS", "SHORT", "VALUE_ONLY", "condition_factors", "conditions",
    "cell_eval_images", "eval_epochs", "eval_rows", "final_rows", "find_cells", "load_grid_results", "read_cell",
    # stats
    "aggregate", "clustered_mean_se", "holm", "mean_ci", "one_sided_gain_p", "paired_gain", "paired_seed_ci",
    "t_quantile", "welch_ci",
    # levels
    "MATCH_FRACTIONS", "ConditionGain", "Level", "MatchedLevels", "condition_gain", "crossing", "levels_by_reward",
    "matched_levels", "matched_runs", "moved_table", "read_after_epoch", "reward_levels",
    # questions
    "ALPHA", "DEFAULTS", "default_questions", "evaluate_question", "questions_for", "questions_table", "select_runs",
    # frontier
    "FRONTIER_METRICS", "MATCHED_METRICS", "fig_frontier_points", "final_gains", "frontier_table",
    # tables
    "PLATEAU_LATE_FRACTION", "PLATEAU_LATE_GAIN", "cells_table", "final_table", "first_flat_epoch", "largest_fall",
    "late_gain_fraction", "learning_table", "matched_reward_table", "paired_reward_gain", "peak_and_rise_after",
    "run_collapse", "step_kl_gmean",
    # plotting
    "PDF_METADATA", "PNG_METADATA", "new_figure", "save_figure", "style", "styled",
    # figures
    "fig_diversity_curves", "fig_final_bars", "fig_frontier", "fig_montage", "fig_reward_curves", "image_axis", "tile",
    "wrap_label",
    # cell
    "CELL_TABLE_METRICS", "as_jpeg", "cell_figures", "cell_table", "config_diff", "fig_cell_curves", "fig_cell_images",
    "fig_cell_ppo",
    # summary
    "SUMMARY_NOTEBOOK", "Summary", "notebook_setup", "run_summary", "summary_figures", "summary_tables",
    "to_markdown", "write_summary",
]
