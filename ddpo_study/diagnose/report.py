"""A whole diagnosis and its report: :func:`run_all` (every measurement, the two curves, the verdict) into
:class:`Results`, :func:`save_results` (``diagnose.json``), the image grids (:func:`fig_base_vs_tuned`,
:func:`fig_images`), and :func:`write_report`, which runs ``notebooks/diagnose.ipynb`` through papermill and writes
one self-contained, code-free HTML page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..models import REPO_ROOT
from ..report import image_axis, new_figure, styled, tile, wrap_label
from .checks import Verdict, loading_checks, reproduction_check, symptom, verdict
from .curves import scale_sweep, switch_sweep
from .loading import _first_line, inspect_tuned
from .sampling import SEED_MODES, Diagnosis

NOTEBOOK = REPO_ROOT / "notebooks" / "diagnose.ipynb"
REPORT_NOTEBOOK, REPORT_HTML, REPORT_JSON = "diagnose.ipynb", "diagnose.html", "diagnose.json"


@dataclass
class Results:
    symptom: pd.DataFrame
    checks: pd.DataFrame
    scale: pd.DataFrame
    switch: pd.DataFrame
    verdict: Verdict
    reproduction: pd.DataFrame  #: :func:`~.checks.reproduction_check` (a run folder's saved evals re-sampled)

    def to_dict(self) -> dict[str, Any]:
        def records(df):
            return json.loads(df.to_json(orient="records"))

        return {"verdict": str(self.verdict), "label": self.verdict.label, "warnings": self.verdict.warnings,
                "symptom": records(self.symptom), "checks": records(self.checks), "scale_sweep": records(self.scale),
                "switch_sweep": records(self.switch), "reproduction": records(self.reproduction)}


def run_all(dx: Diagnosis, scales: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
            switch_steps: Sequence[int] | None = None) -> Results:
    """Every measurement of the diagnosis and its verdict. When the tuned model is not in effect ("adapter not
    applied") the two sweeps are skipped: every point would be the base model."""
    sym = symptom(dx)
    checks = loading_checks(dx)
    found = verdict(sym, checks)
    reproduction = reproduction_check(dx)
    if found.label == "adapter not applied":
        empty = pd.DataFrame(columns=["reward_mean", "cross_div_clip", "retrieval_acc", "within_div_clip"])
        return Results(symptom=sym, checks=checks, scale=empty.assign(scale=[]), switch=empty.assign(base_steps=[]),
                       verdict=found, reproduction=reproduction)
    return Results(symptom=sym, checks=checks, scale=scale_sweep(dx, scales), switch=switch_sweep(dx, switch_steps),
                   verdict=found, reproduction=reproduction)


def save_results(results: Results, out_dir: str | Path) -> Path:
    """``<out_dir>/diagnose.json``: the verdict and every table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_JSON
    path.write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    return path


@styled
def fig_base_vs_tuned(base: np.ndarray, tuned: np.ndarray, prompts: Sequence[str], seeds: Sequence[Any],
                      title: str = ""):
    """Rows: (base, tuned) for each seed; columns: prompts. A tuned row of identical images = the collapse."""
    p, s, h, w = base.shape[:4]
    rows, labels = [], []
    for j, seed in enumerate(seeds):
        rows += [base[:, j], tuned[:, j]]
        labels += [f"base, seed {seed}", f"tuned, seed {seed}"]
    fig = new_figure(2.0 + 0.6 * p, 1.8 + 0.6 * len(rows))
    ax = fig.add_subplot(1, 1, 1)
    image_axis(ax, tile(np.stack(rows)), len(rows), p, h, w)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xticklabels([wrap_label(pr, 24) for pr in prompts], rotation=90, fontsize=5)
    ax.set_title(title or "base vs tuned: same prompts (columns), same seeds")
    return fig


def fig_images(dx: Diagnosis, seeds: str = "shared", max_prompts: int = 8, max_seeds: int = 2,
               save_to: str | Path | None = None):
    """Base and tuned images (rows: base/tuned per seed column; columns: prompts); with ``save_to``, also written
    there as ``images_<seeds>.png`` (fixed metadata, so the same images give the same file)."""
    from ..report import save_figure

    base, tuned = dx.base(seeds)[:max_prompts, :max_seeds], dx.tuned_images(seeds)[:max_prompts, :max_seeds]
    grid = dx.seeds(seeds)
    labels = ([str(int(s)) for s in grid[0, :max_seeds]] if seeds == "shared"
              else [f"own per prompt (#{j})" for j in range(base.shape[1])])
    fig = fig_base_vs_tuned(base, tuned, dx.prompts[:max_prompts], labels,
                            title=f"base vs tuned, {SEED_MODES[seeds]} (columns: prompts)")
    if save_to is not None:
        save_figure(fig, Path(save_to) / f"images_{seeds}", formats=("png",))
    return fig


def write_report(out_dir: str | Path, base_model: str | None, tuned: str | Path, **params) -> Path:
    """Run ``notebooks/diagnose.ipynb`` with these parameters into ``out_dir`` and write ``diagnose.html`` (no code,
    figures inline: one self-contained page), ``diagnose.json`` and the image grids as ``images_<seeds>.png``.
    Returns the HTML path.

    ``params`` are the notebook's other parameters (prompts, reward, num_prompts, ...). Inputs are checked here
    first (the tuned model's layout, a local base folder's components, the prompt set), so a typo fails in one line
    before a kernel starts.
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from ..prompts import load_prompts

    def absolute(value):
        return str(Path(value).resolve()) if value and Path(str(value)).exists() else value

    from ..models import check_local_pipeline

    kind, path = inspect_tuned(tuned)
    if base_model:
        check_local_pipeline(str(base_model))
    if params.get("prompts"):
        load_prompts(params["prompts"])
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parameters = {"base_model": absolute(base_model) or "", "tuned": str(path.resolve()),
                  "out_dir": str(out), **{k: absolute(v) if k in ("prompts", "clip_model", "aesthetic_model") else v
                                          for k, v in params.items()}}
    notebook = out / REPORT_NOTEBOOK
    try:
        papermill.execute_notebook(str(NOTEBOOK), str(notebook), parameters=parameters, progress_bar=False,
                                   log_output=False, kernel_name="python3", cwd=str(REPO_ROOT))
    except papermill.PapermillExecutionError as err:
        raise DiagnoseError(f"the diagnosis failed: {err.ename}: {_first_line(Exception(err.evalue))} "
                            f"(notebook: {notebook})") from None
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    html = out / REPORT_HTML
    html.write_text(body, encoding="utf-8")
    return html


class DiagnoseError(RuntimeError):
    """The diagnosis notebook failed; the message is its error's last line and where the notebook is."""
