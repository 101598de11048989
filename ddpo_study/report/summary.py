"""A grid's summary on disk: :func:`write_summary` saves every summary figure and table under
``<root>/summary/`` reproducibly (same inputs, same bytes); :func:`run_summary` does so through the summary
notebook (``summary.ipynb`` + ``.html``), for ``summary`` and after ``grid run``; Markdown tables; the notebooks'
setup."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..atomic import write_bytes_if_changed
from ..grid.spec import REPO_ROOT, find_spec, load_spec
from .continued import continued_table, fig_continued, joined_curves
from .figures import fig_diversity_curves, fig_final_bars, fig_frontier, fig_montage, fig_reward_curves
from .frontier import fig_frontier_points, frontier_table, remedy_ranking, remedy_rows
from .levels import moved_table
from .methods import fig_methods, has_methods, method_table
from .plotting import save_figure
from .pooled import pooled_table
from .questions import ALPHA, question_seeds, questions_for, read_questions, select_runs
from .results import _factors, load_grid_results
from .tables import cells_table, final_table, learning_table, matched_reward_table

#: Fixed float format of the tables' CSV files (re-running the summary gives the same bytes).
CSV_FLOAT_FORMAT = "%.6g"
#: The tidy data, every eval row of every cell with its config: gzip-compressed (``pd.read_csv`` reads it as
#: is), because as plain text it was the largest file of a summary (2.2 MB for the study) and the tree has a
#: size limit.
TIDY_FILE = "grid_results.csv.gz"
SUMMARY_NOTEBOOK = REPO_ROOT / "notebooks" / "summary.ipynb"


# ================================================================================================ writing
def to_markdown(df: pd.DataFrame, floatfmt: str = "{:.4g}") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else floatfmt.format(v)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


#: Figures that are grids of generated images: PNG only, since a PDF would wrap the same pixels at several times
#: the bytes (the study's montage.pdf took 0.94 MB of a working tree kept under 55 MiB).
RASTER_FIGURES = frozenset({"montage"})


@dataclass
class Summary:
    out_dir: Path
    figures: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def summary_figures(df: pd.DataFrame, remedies: pd.DataFrame | None = None) -> dict[str, Any]:
    """The summary's figures; ``remedies``: inference-remedy rows (:func:`~.frontier.remedy_rows`) for the
    frontier."""
    return {"reward_curves": fig_reward_curves(df), "diversity_curves": fig_diversity_curves(df),
            "frontier": fig_frontier(df), "frontier_points": fig_frontier_points(df, remedies=remedies),
            "final_bars": fig_final_bars(df), "montage": fig_montage(df)}


def summary_tables(df: pd.DataFrame, questions=None, remedies: pd.DataFrame | None = None,
                   extension=None) -> dict[str, pd.DataFrame]:
    """The summary's tables; ``questions``: the spec's pre-registered ones (None: the default questions);
    ``remedies``: inference-remedy rows appended to ``frontier_points``; ``extension``: the spec's seed-extension
    rule (:class:`~ddpo_study.grid.questions.Extension`), which adds its reading (``extension``) and sets the seeds
    each question reads (:func:`~.questions.read_questions`)."""
    frontier = frontier_table(df)
    if remedies is not None and not remedies.empty:
        frontier = pd.concat([frontier, remedies], ignore_index=True)
    table, rule_table, _ = read_questions(df, questions, extension)
    return {"questions": table, **({"extension": rule_table} if rule_table is not None else {}),
            "moved": moved_table(df, ALPHA), "final": final_table(df),
            "matched_reward": matched_reward_table(df), "frontier_points": frontier,
            "remedy_ranking": remedy_ranking(frontier, df),
            "learning": learning_table(df), "cells": cells_table(df)}


def primary_conditions(df: pd.DataFrame, questions) -> list[str] | None:
    """The conditions on either side of the primary questions (they set the cross-method table's gain levels);
    None when there are none (every condition sets them)."""
    found = []
    for q in questions or []:
        if q.primary:
            for side in (q.a, q.b):
                found += [c for c in select_runs(df, {**q.where, **side})["condition"].drop_duplicates()
                          if c not in found]
    return found or None


def write_summary(root: str | Path, out_dir: str | Path | None = None, spec=None,
                  allow_damaged: bool = False) -> Summary:
    """Every summary figure (PNG + PDF; image grids PNG only, :data:`RASTER_FIGURES`) and table (CSV + Markdown)
    of the grid under ``root``, written to ``<root>/summary/`` (or ``out_dir``), plus ``README.md`` (tables inline, figures linked) and
    :data:`TIDY_FILE` (the tidy data), from the finished cells (``DONE``) only. Re-running on the same results
    gives byte-identical files.

    The questions are the ``questions:`` of ``spec`` (a path, dict or GridSpec), or else of the spec in
    ``configs/`` whose output_root is ``root``; without one, the default exploratory questions. A spec's
    ``frontier_remedies`` folder adds the inference-time remedies to the frontier (:func:`~.frontier.remedy_rows`).

    A damaged finished cell (:class:`~ddpo_study.rundir.DamagedRunError`) stops it; with ``allow_damaged`` such
    cells are in no table or figure but listed, with what is wrong, in ``cells.md`` and the README."""
    root = Path(root)
    out = Path(out_dir) if out_dir is not None else root / "summary"
    out.mkdir(parents=True, exist_ok=True)
    # the committed cells only: a clone writes the same files
    df = load_grid_results(root, finished_only=True, allow_damaged=allow_damaged)
    summary = Summary(out_dir=out)
    if df.empty:
        return summary
    spec = load_spec(spec) if spec is not None else find_spec(root)
    questions, source = questions_for(root, spec)
    remedies = remedy_rows(spec.frontier_remedies) if spec is not None and spec.frontier_remedies else None
    summary.figures = summary_figures(df, remedies)
    extension = spec.extension if spec is not None else None
    summary.tables = summary_tables(df, questions, remedies, extension)
    if spec is not None and spec.pool_with and questions:  # a question re-read with another grid's runs pooled in
        seeds = None  # with an extension rule: the seeds each question read (the pooled reading re-reads P2 on them)
        if extension is not None:
            rule = summary.tables["extension"]
            seeds = question_seeds(questions, extension, set(rule.loc[rule["question_extends"], "id"]))
        summary.tables["pooled"] = pooled_table(df, questions, spec.pool_with, seeds)
    if has_methods(df):  # a grid of methods or base models (study v3): the cross-method table and figure
        learning = summary.tables["learning"]  # each run's collapse kind, read once
        summary.tables["methods"] = method_table(df, by=primary_conditions(df, questions),
                                                 collapse=dict(zip(learning["cell"], learning["collapse"])))
        summary.figures["methods"] = fig_methods(summary.tables["methods"])
    read = sorted({Path(c) for c in df["cell_dir"]})  # the finished cells, damaged ones left out
    continued = continued_table(root, read)  # runs started from another run's adapter (init_lora): the joined reads
    if not continued.empty:
        summary.tables["continued"] = continued
        summary.figures["continued_curves"] = fig_continued(joined_curves(root, read))
    for name, fig in summary.figures.items():
        raster = name in RASTER_FIGURES
        summary.files += save_figure(fig, out / name, formats=("png",) if raster else ("png", "pdf"))
        if raster:
            (out / f"{name}.pdf").unlink(missing_ok=True)  # what older summaries wrote
    damaged = df.attrs.get("damaged") or {}
    md = [f"# Summary of {root.name}\n", f"{df['cell'].nunique()} cells, conditions varying in: "
          f"{', '.join(_factors(df)) or '(none)'}; mean and 95% CI over seeds. Questions: {source}.\n"]
    if damaged:
        md.append(f"**{len(damaged)} damaged cell(s) left out of every table and figure** (listed in cells.md): "
                  f"{', '.join(sorted(damaged))}.\n")
    for name, table in summary.tables.items():
        csv = out / f"{name}.csv"
        write_bytes_if_changed(csv, table.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, lineterminator="\n").encode())
        write_bytes_if_changed(out / f"{name}.md", to_markdown(table).encode())
        summary.files += [csv, out / f"{name}.md"]
        md += [f"## {name}\n", to_markdown(table)]
    md += [f"![{name}]({name}.png)\n" for name in summary.figures]
    tidy = df.drop(columns=["cell_dir"])
    # mtime=0: gzip's header would otherwise stamp the time of writing, and the same inputs must give the same bytes
    write_bytes_if_changed(out / TIDY_FILE, gzip.compress(tidy.to_csv(index=False).encode(), mtime=0))
    (out / "grid_results.csv").unlink(missing_ok=True)  # the uncompressed file older summaries wrote
    write_bytes_if_changed(out / "README.md", "\n".join(md).encode())
    summary.files += [out / TIDY_FILE, out / "README.md"]
    return summary


def run_summary(root: str | Path, notebook: bool = True, echo: Callable[[str], None] | None = print,
                allow_damaged: bool = False) -> Path | None:
    """Write ``<root>/summary/`` (figures and tables); with ``notebook`` also ``summary.ipynb`` + ``.html``.

    Returns the summary folder, or None when no cell under ``root`` has results yet. A finished cell whose files
    are damaged stops it with :class:`~ddpo_study.rundir.DamagedRunError` before the notebook starts (one line
    naming the file, not a kernel's traceback); ``allow_damaged`` lists such cells in ``cells.md`` instead.
    """
    from ..grid.runner import cpu_count, execute_notebook, export_html
    from ..grid.spec import _display_path, _resolve
    from ..rundir import check_finished
    from .results import find_cells

    echo = echo or (lambda _msg: None)
    root = _resolve(root)
    cells = find_cells(root)
    if not cells:
        echo(f"summary: no results under {root} yet")
        return None
    if not allow_damaged:
        for cell in cells:
            check_finished(cell)
    out = root / "summary"
    if notebook:
        out.mkdir(parents=True, exist_ok=True)
        params = {"root": _display_path(root), **({"allow_damaged": True} if allow_damaged else {})}
        execute_notebook(SUMMARY_NOTEBOOK, out / "summary.ipynb", params, max(1, cpu_count()))
        export_html(out / "summary.ipynb", out / "summary.html")
    else:
        write_summary(root, allow_damaged=allow_damaged)
    echo(f"summary: {out}")
    return out


def notebook_setup() -> None:
    """Keep notebook reports readable: no loading progress bars of diffusers/transformers, no tqdm widget
    warning (the training bar stays, as text), no deprecation chatter from library internals."""
    import warnings

    warnings.filterwarnings("ignore", message="IProgress not found")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"diffusers\..*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass
