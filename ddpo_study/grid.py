"""A study grid: a YAML spec -> cells (one DDPO run each) -> papermill runs of a cell notebook.

Spec format (``configs/*.yaml``)::

    name: toy_study
    description: free text (optional)
    notebook: notebooks/cell.ipynb          # relative paths are resolved against the repository root
    output_root: results/toy_study          # each cell writes to <output_root>/<cell name>
    cell_name: "{prompt_set}-{mode}-lam{diversity_lambda}-s{seed}"
    fixed:                                  # DDPOConfig keys shared by every cell
      model: toy
      reward: aesthetic
    axes:                                   # the cells are the cartesian product of these lists
      seed: [0, 1, 2]
      prompt_set: [toy_30, toy_300]
      mode: [lora, full, progressive]
    variants:                               # optional: alternatives instead of (or on top of) a full product
      - {variant: base}
      - {variant: rank64, lora_rank: 64, lora_alpha: 64}
    quick:                                  # overrides applied by --quick
      num_epochs: 4                         # a scalar replaces a fixed value (or pins an axis)
      seed: [0]                             # a list replaces an axis (or turns a fixed key into an axis)
      output_root: results/toy_study_quick  # output_root, cell_name and variants may be overridden too

Cells. The cells are the cartesian product of the ``axes`` in the order written (the first axis varies
slowest, so put ``seed`` first to get every condition's first seed early), times the ``variants`` (innermost)
when given. A variant is a mapping of config overrides plus an optional ``variant`` name (available as
``{variant}`` in ``cell_name``; default: the overrides written as ``key=value``). Variants express
one-factor-at-a-time designs: ``axes: {seed: [0, 1, 2]}`` with a baseline variant and one variant per change.
A variant may override ``fixed`` values but not an axis. ``cell_name`` is formatted with the cell's
(validated) config values and ``variant``; a value that is a path is replaced by its file stem, and characters
other than letters, digits and ``._=+-`` by ``_``. Every cell name must be unique.

Validation happens before anything runs: every key of ``fixed``/``axes``/``variants``/``quick`` must be a
parameter of the notebook (``papermill.inspect_notebook``) and every cell's config must pass
:meth:`DDPOConfig.from_dict`; otherwise a :class:`GridError` names the key and the cell. ``output_dir`` is
set by the runner; ``num_threads`` is set to ``max(1, cpu_count // jobs)`` unless the spec sets it.

Running a cell: papermill executes the notebook into ``<cell>/report.ipynb`` (saved after every notebook
cell, so a failure keeps the partial notebook), then nbconvert writes a code-free ``<cell>/report.html``
atomically. ``<cell>/status.json`` records ``state`` (running / done / failed), ``error`` (last lines),
``started``/``finished`` times and ``seconds``. A cell with ``DONE`` (for its number of epochs) and
``report.html`` is skipped; an interrupted cell is simply run again (``train.run`` resumes from its checkpoint);
a failed cell does not stop the others, and :func:`run_grid` reports it (the CLI exits non-zero).
``--jobs N`` runs N cells at once in separate processes; ``--shard i/n`` keeps the cells whose index % n == i.
After a whole grid (no shard) the summary runs: ``notebooks/summary.ipynb`` -> ``<output_root>/summary/``.

Command line (``python -m ddpo_study``)::

    grid run SPEC [--quick] [--jobs N] [--shard i/n] [--no-summary]
    grid status SPEC [--quick]
    summary ROOT_OR_SPEC [--quick] [--no-notebook]
    cell SPEC CELL_NAME [--quick]
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import os
import re
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .config import ConfigError, DDPOConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_NOTEBOOK = REPO_ROOT / "notebooks" / "summary.ipynb"
KERNEL_NAME = "python3"
SPEC_KEYS = ("name", "description", "notebook", "output_root", "cell_name", "fixed", "axes", "variants", "quick")
QUICK_SPECIAL = ("output_root", "cell_name", "variants")
RUNNER_KEYS = ("output_dir",)  # set by the runner, never by a spec
VARIANT_KEY = "variant"
STATUS_FILE = "status.json"
REPORT_NOTEBOOK = "report.ipynb"
REPORT_HTML = "report.html"
ERROR_LINES = 15


class GridError(ValueError):
    """A grid spec that cannot run; the message names the key and, where it applies, the cell."""


# ----------------------------------------------------------------------------------------------- the spec
@dataclass
class GridSpec:
    """A parsed spec (with the ``--quick`` overrides already applied when ``quick`` is true)."""

    name: str
    notebook: Path
    output_root: Path
    cell_name: str
    fixed: dict[str, Any]
    axes: dict[str, list[Any]]
    variants: list[dict[str, Any]] | None = None
    quick: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None
    is_quick: bool = False


@dataclass
class Cell:
    """One grid cell: its position, name, folder and the notebook parameters it runs with."""

    index: int
    name: str
    dir: Path
    params: dict[str, Any]  # every notebook parameter the runner passes (output_dir included)
    variant: str | None = None
    threads_from_spec: bool = False

    @property
    def num_epochs(self) -> int:
        return int(self.params.get("num_epochs", DDPOConfig.num_epochs))


def _resolve(path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def load_spec(spec: str | Path | dict | GridSpec, quick: bool = False) -> GridSpec:
    """Read a spec (YAML file, dict or :class:`GridSpec`), applying the ``quick`` overrides if asked."""
    if isinstance(spec, GridSpec):
        if quick and not spec.is_quick:
            raise GridError("pass the spec's file or dict to apply --quick, not an already-parsed GridSpec")
        return spec
    source = None
    if isinstance(spec, (str, Path)):
        source = Path(spec)
        if not source.is_file():
            raise GridError(f"grid spec {source} does not exist")
        data = yaml.safe_load(source.read_text()) or {}
    else:
        data = dict(spec)
    if not isinstance(data, dict):
        raise GridError(f"grid spec {source or ''} must be a mapping")
    unknown = [k for k in data if k not in SPEC_KEYS]
    if unknown:
        raise GridError(f"unknown top-level key(s) {unknown} in grid spec {source or ''} (allowed: {list(SPEC_KEYS)})")
    for key in ("notebook", "output_root"):
        if not data.get(key):
            raise GridError(f"grid spec {source or ''} needs {key!r}")

    fixed = dict(data.get("fixed") or {})
    axes_raw = dict(data.get("axes") or {})
    for section, values in (("fixed", fixed), ("axes", axes_raw), ("quick", data.get("quick") or {})):
        if not isinstance(values, dict):
            raise GridError(f"{section!r} must be a mapping of keys to values")
    axes = {k: _as_axis(k, v) for k, v in axes_raw.items()}
    variants = data.get("variants")
    quick_over = dict(data.get("quick") or {})
    output_root, cell_name = data["output_root"], data.get("cell_name")
    both = sorted(set(fixed) & set(axes))
    if both:
        raise GridError(f"key(s) {both} are both in 'fixed' and in 'axes'")
    if quick:
        for key, value in quick_over.items():
            if key == "output_root":
                output_root = value
            elif key == "cell_name":
                cell_name = value
            elif key == "variants":
                variants = value
            elif isinstance(value, list):
                fixed.pop(key, None)
                axes[key] = _as_axis(key, value)
            else:
                axes.pop(key, None)
                fixed[key] = value
    if variants is not None:
        if not isinstance(variants, list) or not variants or not all(isinstance(v, dict) for v in variants):
            raise GridError("'variants' must be a non-empty list of mappings")
        variants = [dict(v) for v in variants]
    if not cell_name:
        parts = [f"{{{k}}}" for k in axes] + (["{variant}"] if variants else [])
        cell_name = "-".join(parts) or "cell"
    return GridSpec(name=str(data.get("name") or (source.stem if source else "grid")),
                    notebook=_resolve(data["notebook"]), output_root=_resolve(output_root), cell_name=str(cell_name),
                    fixed=fixed, axes=axes, variants=variants, quick=quick_over,
                    description=str(data.get("description") or ""), source=source, is_quick=quick)


def _as_axis(key: str, values: Any) -> list[Any]:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise GridError(f"axis {key!r} has no values")
    return list(values)


# ----------------------------------------------------------------------------------------------- cells
def _name_value(value: Any) -> str:
    if isinstance(value, str) and ("/" in value or os.sep in value or value.endswith((".txt", ".yaml", ".json"))):
        value = Path(value).stem
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", str(value))


def _variant_label(variant: dict[str, Any]) -> str:
    if VARIANT_KEY in variant:
        return str(variant[VARIANT_KEY])
    return ",".join(f"{k}={v}" for k, v in variant.items() if k != VARIANT_KEY) or "base"


def notebook_parameters(notebook: str | Path) -> dict[str, dict]:
    """The parameters of a notebook's ``parameters`` cell (name -> papermill's description)."""
    import papermill

    path = Path(notebook)
    if not path.is_file():
        raise GridError(f"notebook {path} does not exist")
    return papermill.inspect_notebook(str(path))


def expand(spec: GridSpec, check_notebook: bool = True) -> list[Cell]:
    """All cells of ``spec`` in their deterministic order, each validated (see the module docstring)."""
    params_known = set(notebook_parameters(spec.notebook)) if check_notebook else None
    config_fields = {f.name for f in dataclasses.fields(DDPOConfig)}
    variants = spec.variants or [None]

    def check_keys(keys: Iterable[str], where: str) -> None:
        for key in keys:
            if key in RUNNER_KEYS:
                raise GridError(f"{where}: {key!r} is set by the grid runner (<output_root>/<cell name>), "
                                "not by the spec")
            if params_known is not None and key not in params_known:
                raise GridError(f"{where}: {key!r} is not a parameter of the notebook {spec.notebook} "
                                f"(so it cannot be passed to it)" + _close_hint(key, params_known))

    check_keys([k for k in spec.quick if k not in QUICK_SPECIAL], "quick")  # first: --quick merged them below
    check_keys(spec.fixed, "fixed")
    check_keys(spec.axes, "axes")
    for variant in spec.variants or []:
        check_keys([k for k in variant if k != VARIANT_KEY], f"variant {_variant_label(variant)!r}")
        pinned = sorted(set(variant) & set(spec.axes))
        if pinned:
            raise GridError(f"variant {_variant_label(variant)!r} sets axis key(s) {pinned}; a variant may only "
                            "override fixed values")

    cells: list[Cell] = []
    seen: dict[str, int] = {}
    combos = list(itertools.product(*spec.axes.values())) if spec.axes else [()]
    for combo in combos:
        for variant in variants:
            index = len(cells)
            params = {**spec.fixed, **dict(zip(spec.axes, combo))}
            label = None
            if variant is not None:
                label = _variant_label(variant)
                params.update({k: v for k, v in variant.items() if k != VARIANT_KEY})
            where = f"cell #{index} ({', '.join(f'{k}={v!r}' for k, v in zip(spec.axes, combo))}" + (
                f", variant {label!r})" if label is not None else ")")
            config_values = {k: v for k, v in params.items() if k in config_fields}
            try:
                cfg = DDPOConfig.from_dict({**config_values, "output_dir": "placeholder"})
            except ConfigError as err:
                raise GridError(f"{where}: invalid config: {err}") from err
            coerced = cfg.to_dict()
            params.update({k: coerced[k] for k in config_values})  # e.g. YAML's "3e-4" string -> 0.0003
            values = {**coerced, **{k: v for k, v in params.items() if k not in config_fields}}
            if label is not None:
                values[VARIANT_KEY] = label
            try:
                name = spec.cell_name.format(**{k: _name_value(v) for k, v in values.items()})
            except (KeyError, IndexError, ValueError) as err:
                raise GridError(f"cell_name {spec.cell_name!r}: cannot format it for {where}: {err!r} "
                                "(use config keys or {variant})") from err
            if not name or name in (".", "..") or "/" in name:
                raise GridError(f"cell_name {spec.cell_name!r} gives an unusable folder name {name!r} for {where}")
            if name in seen:
                raise GridError(f"cells #{seen[name]} and #{index} are both named {name!r}: make cell_name include "
                                "every axis (and {variant})")
            seen[name] = index
            cell_dir = spec.output_root / name
            params["output_dir"] = _display_path(cell_dir)
            cells.append(Cell(index=index, name=name, dir=cell_dir, params=params, variant=label,
                              threads_from_spec="num_threads" in params))
    return cells


def _close_hint(key: str, known: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _display_path(path: Path) -> str:
    """A path relative to the repository root when it lies inside it (the kernel runs there), else absolute."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path.resolve())


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not match:
            raise GridError(f"--shard expects i/n (e.g. 0/4), got {shard!r}")
        shard = int(match.group(1)), int(match.group(2))
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise GridError(f"--shard {i}/{n}: need n >= 1 and 0 <= i < n")
    return i, n


def select_shard(cells: list[Cell], shard: str | tuple[int, int] | None) -> list[Cell]:
    parsed = parse_shard(shard)
    if parsed is None:
        return list(cells)
    i, n = parsed
    return [c for c in cells if c.index % n == i]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------- one cell
def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_status(cell_dir: Path) -> dict[str, Any] | None:
    path = Path(cell_dir) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_done(cell: Cell) -> bool:
    """``DONE`` for the cell's number of epochs and a ``report.html``: the cell is complete."""
    done = cell.dir / "DONE"
    if not done.is_file() or not (cell.dir / REPORT_HTML).is_file():
        return False
    try:
        return int(json.loads(done.read_text()).get("epochs", -1)) == cell.num_epochs
    except (json.JSONDecodeError, ValueError, AttributeError):
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(status: dict | None) -> bool:
    """Whether the process a ``running`` status names is still there (only knowable on the same host)."""
    if not status or status.get("state") != "running" or status.get("host") != socket.gethostname():
        return False  # another machine's stale entry must not block this one forever
    pid = int(status.get("pid") or 0)
    return pid > 0 and _pid_alive(pid)


def _running_elsewhere(status: dict | None) -> bool:
    return _alive(status) and int(status.get("pid") or 0) != os.getpid()


@contextmanager
def _thread_env(num_threads: int):
    """OMP/MKL thread counts for the kernel the notebook runs in (it inherits this process's environment)."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: str(num_threads) for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _error_text(err: BaseException) -> str:
    """The last lines of an error: a notebook's traceback for papermill errors, else the Python traceback."""
    ename, evalue, tb = getattr(err, "ename", None), getattr(err, "evalue", None), getattr(err, "traceback", None)
    if ename is not None:
        text = "\n".join(tb or []) + f"\n{ename}: {evalue}"
    else:
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)  # ANSI colours of IPython tracebacks
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-ERROR_LINES:])


def export_html(notebook: Path, html: Path) -> Path:
    """A code-free HTML of ``notebook`` (inputs and prompts hidden), written atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    tmp = html.with_name(html.name + ".tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html)
    return html


def execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any], num_threads: int) -> None:
    """papermill with the study's settings (kernel ``python3``, run in the repository root)."""
    import papermill

    with _thread_env(num_threads):
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, progress_bar=False,
                                   log_output=False, kernel_name=KERNEL_NAME, cwd=str(REPO_ROOT))


def run_cell(notebook: str | Path, cell: Cell, num_threads: int) -> dict[str, Any]:
    """Execute one cell's notebook and write its report and ``status.json``; never raises for cell errors.

    Returns the final status dict (``state`` is ``done``, ``failed`` or ``skipped``).
    """
    cell.dir.mkdir(parents=True, exist_ok=True)
    if is_done(cell):
        return {"state": "skipped", "cell": cell.name}
    old = read_status(cell.dir)
    if _running_elsewhere(old):
        return {"state": "skipped", "cell": cell.name, "reason": f"running in process {old['pid']}"}
    params = dict(cell.params)
    if not cell.threads_from_spec:
        params["num_threads"] = num_threads  # a resumed run may use another thread count (train allows it)
    status = {"cell": cell.name, "index": cell.index, "variant": cell.variant, "state": "running",
              "started": _now(), "finished": None, "seconds": None, "error": None,
              "pid": os.getpid(), "host": socket.gethostname(), "num_threads": params.get("num_threads"),
              "attempt": int((old or {}).get("attempt", 0)) + 1}
    _write_json_atomic(cell.dir / STATUS_FILE, status)
    (cell.dir / REPORT_HTML).unlink(missing_ok=True)  # a stale report must not mark a re-run as done
    t0 = time.time()
    try:
        execute_notebook(Path(notebook), cell.dir / REPORT_NOTEBOOK, params, int(params.get("num_threads") or 1))
        if not (cell.dir / "DONE").is_file():
            raise RuntimeError(f"the notebook finished but {cell.dir / 'DONE'} was not written")
        export_html(cell.dir / REPORT_NOTEBOOK, cell.dir / REPORT_HTML)
        status.update(state="done")
    except KeyboardInterrupt:
        status.update(state="interrupted", error="KeyboardInterrupt")
        raise
    except Exception as err:  # any failure of this cell is recorded; the grid goes on
        status.update(state="failed", error=_error_text(err))
    finally:
        status.update(finished=_now(), seconds=round(time.time() - t0, 1))
        _write_json_atomic(cell.dir / STATUS_FILE, status)
    return status


def _run_cell_worker(args: tuple[str, Cell, int]) -> dict[str, Any]:
    notebook, cell, num_threads = args
    try:
        return run_cell(notebook, cell, num_threads)
    except BaseException as err:  # noqa: BLE001 - report, never hang the pool
        return {"state": "failed", "cell": cell.name, "error": _error_text(err)}


# ----------------------------------------------------------------------------------------------- the grid
@dataclass
class GridResult:
    spec: GridSpec
    cells: list[Cell]
    states: dict[str, str]  # cell name -> done / failed / skipped
    summary_dir: Path | None = None
    summary_error: str | None = None

    @property
    def failed(self) -> list[str]:
        return [name for name, state in self.states.items() if state == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed and self.summary_error is None


def run_grid(spec: str | Path | dict | GridSpec, quick: bool = False, jobs: int = 1,
             shard: str | tuple[int, int] | None = None, summary: bool = True, only: Iterable[str] | None = None,
             echo: Callable[[str], None] | None = print) -> GridResult:
    """Validate every cell, then run the ones not yet done (``jobs`` at a time); see the module docstring.

    ``only``: run just these cell names. The summary (``write_summary`` via the summary notebook) runs after a
    whole grid (no ``shard``/``only``) when ``summary`` is true.
    """
    echo = echo or (lambda _msg: None)
    spec = load_spec(spec, quick=quick)
    if jobs < 1:
        raise GridError(f"--jobs must be >= 1, got {jobs}")
    cells = expand(spec)  # validation of every cell happens here, before anything runs
    selected = select_shard(cells, shard)
    if only is not None:
        wanted = list(only)
        names = {c.name for c in cells}
        missing = [w for w in wanted if w not in names]
        if missing:
            raise GridError(f"no cell named {missing} in grid {spec.name!r}" + _close_hint(missing[0], names))
        selected = [c for c in selected if c.name in wanted]
    threads = max(1, cpu_count() // jobs)
    spec.output_root.mkdir(parents=True, exist_ok=True)
    todo = [c for c in selected if not is_done(c)]
    echo(f"grid {spec.name}: {len(cells)} cells, {len(selected)} selected, {len(selected) - len(todo)} already done, "
         f"{len(todo)} to run ({jobs} at a time, {threads} thread(s) each) -> {spec.output_root}")
    states = {c.name: "skipped" for c in selected if c not in todo}

    def report(i: int, status: dict[str, Any]) -> None:
        states[status["cell"]] = "failed" if status["state"] == "failed" else (
            "done" if status["state"] == "done" else "skipped")
        msg = f"[{i}/{len(todo)}] {status['cell']}: {status['state']}"
        if status.get("seconds") is not None:
            msg += f" in {status['seconds']:.0f} s"
        if status["state"] == "failed" and status.get("error"):
            msg += f" -- {status['error'].splitlines()[-1]}"
        echo(msg)

    if jobs == 1 or len(todo) <= 1:
        for i, cell in enumerate(todo, 1):
            echo(f"running {cell.name} ...")
            report(i, run_cell(spec.notebook, cell, threads))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # a clean interpreter per worker; papermill starts kernels
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run_cell_worker, (str(spec.notebook), c, threads)) for c in todo]
            for i, fut in enumerate(as_completed(futures), 1):
                report(i, fut.result())

    result = GridResult(spec=spec, cells=selected, states=states)
    if result.failed:
        echo(f"{len(result.failed)} cell(s) failed: {', '.join(result.failed)} (see <cell>/status.json, "
             "<cell>/report.ipynb)")
    if summary and shard is None and only is None:
        try:
            result.summary_dir = run_summary(spec.output_root, echo=echo)
        except Exception as err:  # noqa: BLE001 - the cells' results stand; say what went wrong
            result.summary_error = _error_text(err)
            echo(f"summary failed: {result.summary_error.splitlines()[-1]}")
    return result


def run_summary(root: str | Path, notebook: bool = True, echo: Callable[[str], None] | None = print) -> Path | None:
    """Write ``<root>/summary/`` (figures and tables); with ``notebook`` also ``summary.ipynb`` + ``.html``.

    Returns the summary folder, or None when no cell under ``root`` has results yet.
    """
    from .report import find_cells, write_summary

    echo = echo or (lambda _msg: None)
    root = _resolve(root)
    if not find_cells(root):
        echo(f"summary: no results under {root} yet")
        return None
    out = root / "summary"
    if notebook:
        out.mkdir(parents=True, exist_ok=True)
        execute_notebook(SUMMARY_NOTEBOOK, out / "summary.ipynb", {"root": _display_path(root)}, max(1, cpu_count()))
        export_html(out / "summary.ipynb", out / "summary.html")
    else:
        write_summary(root)
    echo(f"summary: {out}")
    return out


# ----------------------------------------------------------------------------------------------- status
def status(spec: str | Path | dict | GridSpec, quick: bool = False) -> "pd.DataFrame":  # noqa: F821
    """One row per cell: cell, state, epochs done / total (from metrics.csv), last rewards, seconds, error.

    States: ``done``, ``failed``, ``running``, ``interrupted`` (marked running by a process that is gone),
    ``partial`` (has results but no status, e.g. from ``ddpo-study train``) and ``pending``.
    """
    import pandas as pd

    spec = load_spec(spec, quick=quick)
    rows = []
    for cell in expand(spec, check_notebook=False):
        st = read_status(cell.dir) or {}
        epochs_done, last_reward, last_train = 0, float("nan"), float("nan")
        metrics = cell.dir / "metrics.csv"
        if metrics.is_file():
            try:
                df = pd.read_csv(metrics)
                epochs_done = int(df["epoch"].max()) if len(df) else 0
                if "reward_mean" in df:
                    evals = df["reward_mean"].dropna()
                    last_reward = float(evals.iloc[-1]) if len(evals) else float("nan")
                if "train_reward_mean" in df:
                    tr = df["train_reward_mean"].dropna()
                    last_train = float(tr.iloc[-1]) if len(tr) else float("nan")
            except (pd.errors.EmptyDataError, KeyError, ValueError):
                pass
        if is_done(cell):
            state = "done"
        elif st.get("state") == "running":
            state = "running" if _alive(st) else "interrupted"
        elif st.get("state") in ("failed", "interrupted"):
            state = st["state"]
        elif st.get("state") == "done":
            state = "partial"  # done before, but needs more epochs now (or its report is gone)
        else:
            state = "partial" if metrics.is_file() else "pending"
        error = (st.get("error") or "").strip().splitlines()
        rows.append({"cell": cell.name, "state": state, "epochs_done": epochs_done, "epochs_total": cell.num_epochs,
                     "last_eval_reward": last_reward, "last_train_reward": last_train,
                     "seconds": st.get("seconds"), "error": error[-1] if error and state == "failed" else ""})
    return pd.DataFrame(rows, columns=["cell", "state", "epochs_done", "epochs_total", "last_eval_reward",
                                       "last_train_reward", "seconds", "error"])


def find_cell(spec: str | Path | dict | GridSpec, name: str, quick: bool = False) -> tuple[GridSpec, Cell]:
    spec = load_spec(spec, quick=quick)
    cells = expand(spec)
    for cell in cells:
        if cell.name == name:
            return spec, cell
    raise GridError(f"no cell named {name!r} in grid {spec.name!r}" + _close_hint(name, [c.name for c in cells]))
