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
  (:func:`final_table`, :func:`matched_reward_table`, :func:`questions_table`, :func:`contrasts_table`,
  :func:`learning_table`: each run's paired reward gain over the base model, in standard errors), and
  :func:`write_summary`, which saves them all under ``<root>/summary/`` reproducibly (same inputs, same bytes).

Statistics (means over seeds with 95% t-intervals, Welch's interval for differences, "matched reward"): see
:mod:`ddpo_study.report.stats`.

Modules: ``results`` (reading run folders, condition labels, eval rows and images), ``stats`` (intervals,
matched reward), ``tables`` (grid tables and the four questions), ``plotting`` (style, reproducible saving),
``figures`` (grid figures, image layout), ``cell`` (one run's figures and tables), ``summary`` (writing
``<root>/summary/``, Markdown, notebook setup). Everything is re-exported here: use ``report.<name>``.
"""

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
from .figures import (
    _image_axis as _image_axis,  # private helpers that ddpo_study.explore uses (explicit re-exports)
    _wrap as _wrap,
    fig_diversity_curves,
    fig_final_bars,
    fig_frontier,
    fig_montage,
    fig_reward_curves,
    tile,
)
from .plotting import PDF_METADATA, PNG_METADATA, save_figure, style
from .plotting import _figure as _figure, _styled as _styled  # used by ddpo_study.explore
from .results import (
    FINAL_METRICS,
    LABELS,
    NON_FACTORS,
    SHORT,
    VALUE_ONLY,
    condition_factors,
    conditions,
    eval_epochs,
    eval_rows,
    final_rows,
    find_cells,
    load_eval_images,
    load_grid_results,
    read_cell,
)
from .stats import (
    MATCH_FRACTIONS,
    aggregate,
    matched_runs,
    mean_ci,
    reward_levels,
    t_quantile,
    value_at_reward,
    welch_ci,
)
from .summary import Summary, notebook_setup, summary_figures, summary_tables, to_markdown, write_summary
from .tables import (
    QUESTIONS,
    cells_table,
    contrasts_table,
    final_table,
    learning_table,
    matched_reward_table,
    paired_reward_gain,
    questions_table,
)

__all__ = [
    # results
    "FINAL_METRICS", "LABELS", "NON_FACTORS", "SHORT", "VALUE_ONLY", "condition_factors", "conditions",
    "eval_epochs", "eval_rows", "final_rows", "find_cells", "load_eval_images", "load_grid_results", "read_cell",
    # stats
    "MATCH_FRACTIONS", "aggregate", "matched_runs", "mean_ci", "reward_levels", "t_quantile", "value_at_reward",
    "welch_ci",
    # tables
    "QUESTIONS", "cells_table", "contrasts_table", "final_table", "learning_table", "matched_reward_table",
    "paired_reward_gain", "questions_table",
    # plotting
    "PDF_METADATA", "PNG_METADATA", "save_figure", "style",
    # figures
    "fig_diversity_curves", "fig_final_bars", "fig_frontier", "fig_montage", "fig_reward_curves", "tile",
    # cell
    "CELL_TABLE_METRICS", "as_jpeg", "cell_figures", "cell_table", "config_diff", "fig_cell_curves", "fig_cell_images",
    "fig_cell_ppo",
    # summary
    "Summary", "notebook_setup", "summary_figures", "summary_tables", "to_markdown", "write_summary",
]
