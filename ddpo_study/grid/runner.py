"""Running a grid: one cell's notebook through papermill (``status.json``, ``report.ipynb``, ``report.html``),
all cells (``--jobs``, ``--shard``), and the grid's status. The summary after a whole grid is the caller's
(``summarize``): the grid never imports the report.

How cells run, are skipped and resumed is in the :mod:`ddpo_study.grid` docstring.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import re
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..atomic import write_text
from ..rundir import (
    DENOISER_FOLDERS,
    DONE_FILE,
    METRICS_FILE,
    SHARED_EVAL_DIR,
    ensure_rewards_file,
    has_done,
    is_finished,
    read_done,
    read_status,
    read_stop,
    share_eval_file,
    write_status,
)
from .errors import GridError
from .progress import CellProgress
from .spec import (
    REPO_ROOT,
    Cell,
    GridSpec,
    _close_hint,
    _display_path,
    expand,
    load_spec,
    select_match,
    select_shard,
)

KERNEL_NAME = "python3"
REPORT_NOTEBOOK = "report.ipynb"
REPORT_HTML = "report.html"
STOP_FILE = "STOP"  # in a grid's output_root: start no more cells (``grid stop``)
ERROR_LINES = 15


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------- one cell
def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def is_trained(cell: Cell) -> bool:
    """The cell's run is trained to its number of epochs (``DONE`` and the last metrics row), report or not."""
    return is_finished(cell.dir, cell.num_epochs)


def is_done(cell: Cell, need_report: bool | None = None) -> bool:
    """Trained, and rendered (``report.html``) if its report is wanted: the cell is complete.

    ``need_report`` None: the report is wanted where the spec commits it (``keep_report``), so a clone, which has
    only the committed reports, does not re-render (and re-stamp) every other cell; True: always (a cell asked
    for by name)."""
    need = cell.keep_report if need_report is None else need_report
    return is_trained(cell) and (not need or (cell.dir / REPORT_HTML).is_file())


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


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else ``platform.processor()``), kept in a cell's status:
    runs of one config on different CPUs can differ in floating point (BLAS picks kernels per CPU), and the
    host name alone does not tell the machines apart."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
    """A code-free HTML of ``notebook`` (inputs and prompts hidden), written atomically, its theme CSS shared."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    nb = nbformat.read(str(notebook), as_version=4)
    for i, cell in enumerate(nb.cells):  # papermill gives its injected cell a random id: the page would differ
        cell["id"] = f"cell-{i}"
    body, _ = exporter.from_notebook_node(nb)
    write_text(html, share_theme_css(body, html.parent.parent))
    return html


_THEME_STYLE = re.compile(r'<style type="text/css">(.*?)</style>', re.S)


def share_theme_css(page: str, css_dir: Path) -> str:
    """``page`` with the ``<head>``'s inline CSS moved to ``css_dir/report-style-<hash>.css`` and linked.

    nbconvert inlines ~260 kB of JupyterLab theme CSS into every page, the same in all of them: 36 reports
    would carry 9 MB of it. Reports live one folder below ``css_dir`` (``<root>/<cell>/report.html``,
    ``<root>/summary/summary.html``), so they link ``../report-style-<hash>.css``; the hash names the content,
    so reports made by another nbconvert version link their own file. Idempotent.
    """
    head_end = page.find("<body")
    head = page[:max(head_end, 0)]
    blocks = list(_THEME_STYLE.finditer(head))
    if not blocks:
        return page
    css = "\n".join(m.group(1) for m in blocks)
    name = f"report-style-{hashlib.sha256(css.encode()).hexdigest()[:12]}.css"
    target = Path(css_dir) / name
    if not target.is_file():
        write_text(target, css)
    link = f'<link rel="stylesheet" href="../{name}">'
    parts, last = [], 0
    for i, m in enumerate(blocks):  # the link takes the first block's place: the cascade order is kept
        parts += [head[last:m.start()], link if i == 0 else ""]
        last = m.end()
    return "".join(parts) + head[last:] + page[head_end:]


def execute_notebook(notebook: Path, output: Path, parameters: dict[str, Any], num_threads: int) -> None:
    """papermill with the study's settings (kernel ``python3``, run in the repository root)."""
    import papermill

    with _thread_env(num_threads):
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters, progress_bar=False,
                                   log_output=False, kernel_name=KERNEL_NAME, cwd=str(REPO_ROOT))


def write_cell_gitignore(cell_dir: Path, keep_unet: bool = False, keep_report: bool = True,
                         keep_eval: bool = True, keep_lora: bool = True) -> Path:
    """A cell's ``.gitignore``: what of it goes into version control with the study's results (an unfinished
    cell: nothing, until its ``DONE`` exists; the runner rewrites the file when the cell finishes).

    Kept: config, metrics, status, the per-image eval rewards of epoch 0 and of the final epoch
    (``eval/epoch_XXXX.rewards.npz``, a few kB: the paired, prompt-clustered reward gain needs them; the runner
    writes them from the images' npz for runs older than these files). With ``keep_lora`` (default): the final LoRA adapter
    (``final/lora``, ~130 kB at rank 4; diagnose loads it). With ``keep_eval`` (default): the eval
    images of the final epoch (~0.3 MB) and a link to those of epoch 0 (the base model: byte-identical across a
    grid's cells, so the grid's ``base_eval/`` holds one copy, :func:`ddpo_study.rundir.share_eval_file`). With ``keep_report`` (default):
    ``report.html``; with ``keep_unet``: the full-tuned weights (``final/unet`` or, for an SD3 transformer,
    ``final/transformer``; a few MB in fp16). The grid spec's ``keep_*`` keys choose the cells, to keep the tree small
    (``grid run`` renders a missing report from the data without training; a kept adapter re-samples the
    images). Left local: the executed ``report.ipynb``, the eval PNG grids (the npz holds the same images),
    intermediate evals and checkpoints.

    The patterns depend only on the epochs the run was trained to (its ``DONE`` file) and the flags, never on
    which files are present, so a clone that lacks the intermediate evals writes the same file (``make study``
    leaves ``git status`` clean).
    """
    final = read_done(cell_dir)
    if final is None:  # running or interrupted: nothing of it is a result yet
        lines = [f"# Written by the grid runner: an unfinished cell (no {DONE_FILE} yet); nothing of it is committed.",
                 "*"]
        return _write_gitignore(cell_dir, lines)
    images = ["!eval/epoch_0000.link.json", f"!eval/epoch_{final:04d}.npz"] if keep_eval else []
    lines = ["# Written by the grid runner (ddpo_study.grid.runner.write_cell_gitignore): the base and final eval",
             "# rewards (and, for some cells, images) and the final adapter are committed; the executed notebook,",
             "# other evals and checkpoints stay local.",
             REPORT_NOTEBOOK, "checkpoints/", "eval/epoch_*", "!eval/epoch_0000.rewards.npz",
             f"!eval/epoch_{final:04d}.rewards.npz", *images,
             *([] if keep_report else [REPORT_HTML]),
             # the full weights, under their denoiser's folder (a UNet's "unet", an SD3 transformer's "transformer")
             *([] if keep_unet else [f"final/{folder}/" for folder in sorted(set(DENOISER_FOLDERS.values()))]),
             *([] if keep_lora else ["final/lora/"])]
    return _write_gitignore(cell_dir, lines)


def _write_finished_gitignore(cell: Cell) -> Path:
    """:func:`write_cell_gitignore` with the cell's ``keep_*`` flags from its spec, after making sure the base and
    final per-image reward files it lists exist (runs older than those files have them only inside the images'
    npz)."""
    final = read_done(cell.dir)
    if final is not None:
        for epoch in (0, final):
            ensure_rewards_file(cell.dir, epoch)
        if cell.keep_eval:  # the base model's images, the same in every cell: one copy per grid (a clone has the link)
            share_eval_file(cell.dir, 0, cell.dir.parent / SHARED_EVAL_DIR)
    return write_cell_gitignore(cell.dir, cell.keep_unet, cell.keep_report, cell.keep_eval, cell.keep_lora)


def _write_gitignore(cell_dir: Path, lines: list[str]) -> Path:
    path = cell_dir / ".gitignore"
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
    return path


def run_cell(notebook: str | Path, cell: Cell, num_threads: int, need_report: bool | None = None) -> dict[str, Any]:
    """Execute one cell's notebook and write its report and ``status.json``; never raises for cell errors.

    Returns the final status dict (``state`` is ``done``, ``failed`` or ``skipped``); ``need_report``: as in
    :func:`is_done`.
    """
    cell.dir.mkdir(parents=True, exist_ok=True)
    if is_done(cell, need_report):
        return {"state": "skipped", "cell": cell.name}
    old = read_status(cell.dir)
    if _running_elsewhere(old):
        return {"state": "skipped", "cell": cell.name, "reason": f"running in process {old['pid']}"}
    config = dict(cell.params)
    if not cell.threads_from_spec:
        config["num_threads"] = num_threads  # a resumed run may use another thread count (train allows it)
    status = {"cell": cell.name, "index": cell.index, "variant": cell.variant, "state": "running",
              "started": _now(), "finished": None, "seconds": None, "error": None,
              "pid": os.getpid(), "host": socket.gethostname(), "cpu": cpu_model(),
              "num_threads": config.get("num_threads"),
              "attempt": int((old or {}).get("attempt", 0)) + 1}
    write_status(cell.dir, status)
    write_cell_gitignore(cell.dir)  # unfinished: ignored whole until it is done
    (cell.dir / REPORT_HTML).unlink(missing_ok=True)  # a stale report must not mark a re-run as done
    t0 = time.time()
    try:
        with CellProgress(cell.dir, cell.name, cell.num_epochs):  # a line per eval while the kernel trains
            execute_notebook(Path(notebook), cell.dir / REPORT_NOTEBOOK, {"config": config},
                             int(config.get("num_threads") or 1))
        if not has_done(cell.dir):
            raise RuntimeError(f"the notebook finished but {cell.dir / DONE_FILE} was not written")
        export_html(cell.dir / REPORT_NOTEBOOK, cell.dir / REPORT_HTML)
        _write_finished_gitignore(cell)
        status.update(state="done", **({"stopped": stop} if (stop := read_stop(cell.dir)) else {}))
    except KeyboardInterrupt:
        status.update(state="interrupted", error="KeyboardInterrupt")
        raise
    except Exception as err:  # any failure of this cell is recorded; the grid goes on
        status.update(state="failed", error=_error_text(err))
    finally:
        status.update(finished=_now(), seconds=round(time.time() - t0, 1))
        write_status(cell.dir, status)
    return status


def request_stop(spec: str | Path | dict | GridSpec, quick: bool = False) -> Path:
    """Ask a running ``grid run`` to finish the cells it is running and start no more (``grid stop``).

    Why: a session or a machine lease ends at a fixed time, and a cell killed half way loses its work wherever
    its checkpoints are not kept (a fresh clone has none). The request is a file, so it reaches the grid's
    worker processes without any channel to them; the next ``grid run`` removes it.
    """
    spec = load_spec(spec, quick=quick)
    spec.output_root.mkdir(parents=True, exist_ok=True)
    path = spec.output_root / STOP_FILE
    write_text(path, f"stop requested {_now()}\n")
    return path


def _stopped(cell: Cell) -> dict[str, Any] | None:
    if (cell.dir.parent / STOP_FILE).is_file():
        return {"state": "not started", "cell": cell.name, "reason": "stop requested"}
    return None


def _run_cell_worker(args: tuple[str, Cell, int, bool | None]) -> dict[str, Any]:
    notebook, cell, num_threads, need_report = args
    try:
        return _stopped(cell) or run_cell(notebook, cell, num_threads, need_report)
    except BaseException as err:  # noqa: BLE001 - report, never hang the pool
        return {"state": "failed", "cell": cell.name, "error": _error_text(err)}


# ----------------------------------------------------------------------------------------------- the grid
#: What runs after a whole grid: ``summarize(output_root, echo=...)`` -> the summary folder (None: no results yet).
Summarize = Callable[..., "Path | None"]


@dataclass
class GridResult:
    spec: GridSpec
    cells: list[Cell]
    states: dict[str, str]  # cell name -> done / failed / skipped / not started (after ``grid stop``)
    summary_dir: Path | None = None
    summary_error: str | None = None

    @property
    def failed(self) -> list[str]:
        return [name for name, state in self.states.items() if state == "failed"]

    @property
    def not_started(self) -> list[str]:
        return [name for name, state in self.states.items() if state == "not started"]

    @property
    def ok(self) -> bool:
        return not self.failed and self.summary_error is None


def run_grid(spec: str | Path | dict | GridSpec, quick: bool = False, jobs: int = 1,
             shard: str | tuple[int, int] | None = None, summarize: Summarize | None = None,
             only: Iterable[str] | None = None, match: str | Iterable[str] | None = None,
             echo: Callable[[str], None] | None = print) -> GridResult:
    """Validate every cell, then run the ones not yet done (``jobs`` at a time); see :mod:`ddpo_study.grid`.

    ``only``: run just these cell names (their reports are rendered). ``match``: only the cells whose name matches
    one of these shell-style patterns (e.g. a question's conditions first). ``summarize(output_root, echo=echo)``
    (the command line passes :func:`ddpo_study.report.run_summary`) runs after a whole grid (no
    ``shard``/``only``/``match``, none stopped); its error is recorded, not raised: the cells' results stand.
    """
    echo = echo or (lambda _msg: None)
    spec = load_spec(spec, quick=quick)
    if jobs < 1:
        raise GridError(f"--jobs must be >= 1, got {jobs}")
    cells = expand(spec)  # validation of every cell happens here, before anything runs
    selected = select_match(select_shard(cells, shard), match)
    if only is not None:
        wanted = list(only)
        names = {c.name for c in cells}
        missing = [w for w in wanted if w not in names]
        if missing:
            raise GridError(f"no cell named {missing} in grid {spec.name!r}" + _close_hint(missing[0], names))
        selected = [c for c in selected if c.name in wanted]
    threads = max(1, cpu_count() // jobs)
    spec.output_root.mkdir(parents=True, exist_ok=True)
    stop_file = spec.output_root / STOP_FILE
    if stop_file.is_file():  # an old request: this run is the user asking to go on
        stop_file.unlink()
        echo(f"removed an earlier stop request ({_display_path(stop_file)})")
    need_report = True if only is not None else None  # a cell asked for by name gets its report rendered
    todo = [c for c in selected if not is_done(c, need_report)]
    echo(f"grid {spec.name}: {len(cells)} cells, {len(selected)} selected, {len(selected) - len(todo)} already done, "
         f"{len(todo)} to run ({jobs} at a time, {threads} thread(s) each) -> {spec.output_root}")
    done_cells = [c for c in selected if c not in todo]
    states = {c.name: "skipped" for c in done_cells}
    for c in done_cells:
        _write_finished_gitignore(c)  # idempotent; also covers cells finished by an older version

    def report(i: int, status: dict[str, Any]) -> None:
        if status["state"] == "not started":
            states[status["cell"]] = "not started"
            return  # counted once below
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
            stopped = _stopped(cell)
            if not stopped:
                echo(f"running {cell.name} ...")
            report(i, stopped or run_cell(spec.notebook, cell, threads, need_report))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("spawn")  # a clean interpreter per worker; papermill starts kernels
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_run_cell_worker, (str(spec.notebook), c, threads, need_report)) for c in todo]
            for i, fut in enumerate(as_completed(futures), 1):
                report(i, fut.result())

    result = GridResult(spec=spec, cells=selected, states=states)
    if result.not_started:
        echo(f"stopped on request: {len(result.not_started)} cell(s) not started; `grid run` again to go on")
    if result.failed:
        echo(f"{len(result.failed)} cell(s) failed: {', '.join(result.failed)} (see <cell>/status.json, "
             "<cell>/report.ipynb)")
    if summarize and shard is None and only is None and match is None and not result.not_started:
        _summarize(result, summarize, echo)
    return result


def _summarize(result: GridResult, summarize: Summarize, echo: Callable[[str], None]) -> None:
    try:
        result.summary_dir = summarize(result.spec.output_root, echo=echo)
    except Exception as err:  # noqa: BLE001 - the cells' results stand; say what went wrong
        result.summary_error = _error_text(err)
        echo(f"summary failed: {result.summary_error.splitlines()[-1]}")


# ----------------------------------------------------------------------------------------------- status
def status(spec: str | Path | dict | GridSpec, quick: bool = False) -> "pd.DataFrame":  # noqa: F821
    """One row per cell: cell, state, epochs done / total (from metrics.csv), last rewards, seconds, error.

    States: ``done``, ``failed``, ``running``, ``interrupted`` (marked running by a process that is gone),
    ``partial`` (has results but no status, e.g. from ``ddpo-study train``) and ``pending``.
    """
    import pandas as pd

    spec = load_spec(spec, quick=quick)
    rows = []
    for cell in expand(spec):
        st = read_status(cell.dir) or {}
        epochs_done, last_reward, last_train = 0, float("nan"), float("nan")
        metrics = cell.dir / METRICS_FILE
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
