"""A study grid: a YAML spec -> cells (one DDPO run each) -> papermill runs of a cell notebook.

Spec format (``configs/*.yaml``)::

    name: toy_study
    description: free text (optional)
    notebook: notebooks/cell.ipynb          # relative paths are resolved against the repository root
    output_root: results/toy_study          # each cell writes to <output_root>/<cell name>
    cell_name: "{prompt_set}-{mode}-lam{diversity_lambda}-s{seed}"
    fixed:                                  # DDPOConfig fields shared by every cell
      model: toy
      reward: aesthetic
    axes:                                   # the cells are the cartesian product of these lists
      seed: [0, 1, 2]
      prompt_set: [toy_30, toy_300]
      mode: [lora, full, progressive]
    variants:                               # optional: alternatives instead of (or on top of) a full product
      - {variant: base}
      - {variant: rank64, lora_rank: 64, lora_alpha: 64}
    exclude:                                # optional: axis combinations that are not run (values or lists)
      - {seed: [3, 4, 5], prompt_set: toy_300}
      - {seed: 3, variant: rank64}          # `variant` (a variant's name) may be named like an axis
    keep_unet: {seed: 0}                    # optional: cells that commit final/unet (default: none)
    keep_report: {seed: 0}                  # optional: cells that commit report.html (default: all)
    keep_eval: {seed: 0}                    # optional: cells that commit their eval images (default: all)
    keep_lora: {seed: 0}                    # optional: cells that commit final/lora (default: all)
    frontier_remedies: results/inference_remedies   # optional: inference-remedy points on the summary's frontier
    pool_with: {P2: results/toy_study}      # optional: a question re-read with another grid's runs of the same recipe
    extension: {seeds: [0, 1, 2, 3, 4, 5], add: [6, 7]}   # optional: the seed-extension rule (questions.Extension)
    quick:                                  # overrides applied by --quick
      num_epochs: 4                         # a scalar replaces a fixed value (or pins an axis)
      seed: [0]                             # a list replaces an axis (or turns a fixed key into an axis)
      output_root: results/toy_study_quick  # output_root, cell_name and variants may be overridden too
    questions:                              # optional: the contrasts the summary answers, written before the run
      - id: Q1
        text: Does LoRA lose more diversity than full fine-tuning at matched reward?
        a: {mode: lora}                     # the two conditions, as axis values (or {variant: name})
        b: {mode: full}
        where: {prompt_set: toy_30}         # every other axis with several values, seed excepted
        metrics: [cross_div_clip, retrieval_acc, judge_all, judge_distinct]
        at: matched                         # matched (reward levels) | final (last epoch)
        fractions: [0.5]                    # matched levels: fractions of the smaller of the two mean gains
        primary: true                       # Holm over the primary rows; else exploratory
        min_seeds: 6                        # fewer common seeds: "not answered"

Questions: see :func:`ddpo_study.grid.questions.parse_questions` (validated when the spec is loaded, against the
full grid) and :mod:`ddpo_study.report.questions` (how they are answered). Without ``questions:`` the summary
asks its default exploratory questions.

Cells. The cells are the cartesian product of the ``axes`` in the order written (the first axis varies
slowest, so put ``seed`` first to get every condition's first seed early), times the ``variants`` (innermost)
when given. A variant is a mapping of config overrides plus an optional ``variant`` name (available as
``{variant}`` in ``cell_name``; default: the overrides written as ``key=value``). Variants express
one-factor-at-a-time designs: ``axes: {seed: [0, 1, 2]}`` with a baseline variant and one variant per change.
A variant may override ``fixed`` values but not an axis. ``cell_name`` is formatted with the cell's
(validated) config values and ``variant``; a value that is a path is replaced by its file stem, and characters
other than letters, digits and ``._=+-`` by ``_``. Every cell name must be unique.

Validation happens before anything runs: every key of ``fixed``/``axes``/``variants``/``quick`` must be a
:class:`~ddpo_study.config.DDPOConfig` field and every cell's config must pass :meth:`DDPOConfig.from_dict`;
otherwise a :class:`GridError` names the key (with the closest field) and the cell. ``output_dir`` is
set by the runner; ``num_threads`` is set to ``max(1, cpu_count // jobs)`` unless the spec sets it.

Running a cell: papermill executes the notebook into ``<cell>/report.ipynb`` with the cell's config as its one
parameter, ``config`` (a dict); the notebook is saved after every notebook cell, so a failure keeps the partial
notebook; then nbconvert writes a code-free ``<cell>/report.html`` atomically. ``<cell>/status.json`` records
``state`` (running / done / failed), ``error`` (last lines), ``started``/``finished`` times and ``seconds``. A
cell with ``DONE`` (for its number of epochs) and ``report.html`` is skipped; an interrupted cell is simply run
again (``train.run`` resumes from its checkpoint); a failed cell does not stop the others, and :func:`run_grid`
reports it (the CLI exits non-zero).
``--jobs N`` runs N cells at once in separate processes; ``--shard i/n`` keeps the cells whose index % n == i;
``--match PATTERNS`` keeps the cells whose name matches a comma-separated shell-style pattern.
``grid stop SPEC`` writes ``<output_root>/STOP``: the running grid finishes the cells it has started and starts
no more (no summary); the next ``grid run`` removes the file and goes on.
After a whole grid (no shard or match) the command line runs the summary (:func:`ddpo_study.report.run_summary`:
``notebooks/summary.ipynb`` -> ``<output_root>/summary/``), handed to :func:`run_grid` as ``summarize``: the grid
knows nothing of the report.

Command line (``python -m ddpo_study``)::

    grid run SPEC [--quick] [--jobs N] [--shard i/n] [--match PATTERNS] [--no-summary]
    grid status SPEC [--quick]
    grid stop SPEC [--quick]                                      # finish the running cells, start no more
    grid configs SPEC DIR [--quick] [--shard i/n] [--match PATTERNS]   # each unfinished cell's config, to train elsewhere
    summary ROOT_OR_SPEC [--quick] [--no-notebook] [--allow-damaged]
    cell SPEC CELL_NAME [--quick]

Modules: ``spec`` (the spec, its cells, ``--shard``), ``questions`` (the pre-registered contrasts), ``errors``
(:class:`GridError`) and ``runner`` (running cells, the grid, the status); everything is re-exported here.
"""

from .errors import GridError
from .questions import QUESTION_METRICS, Extension, Question, parse_extension, parse_questions, same_value
from .runner import (
    ERROR_LINES,
    KERNEL_NAME,
    REPORT_HTML,
    REPORT_NOTEBOOK,
    STOP_FILE,
    GridResult,
    cpu_count,
    execute_notebook,
    export_html,
    find_cell,
    is_done,
    is_trained,
    read_status,
    request_stop,
    run_cell,
    run_grid,
    share_theme_css,
    status,
)
from .spec import (
    QUICK_SPECIAL,
    REPO_ROOT,
    RUNNER_KEYS,
    SPEC_KEYS,
    VARIANT_KEY,
    Cell,
    GridSpec,
    expand,
    find_spec,
    load_spec,
    parse_shard,
    select_match,
    select_shard,
)

__all__ = [
    # errors, questions
    "GridError", "QUESTION_METRICS", "Extension", "Question", "parse_extension", "parse_questions", "same_value",
    # spec
    "QUICK_SPECIAL", "REPO_ROOT", "RUNNER_KEYS", "SPEC_KEYS", "VARIANT_KEY", "Cell", "GridSpec", "expand", "find_spec",
    "load_spec", "parse_shard", "select_match", "select_shard",
    # runner
    "ERROR_LINES", "KERNEL_NAME", "REPORT_HTML", "REPORT_NOTEBOOK", "STOP_FILE",
    "GridResult", "cpu_count", "execute_notebook", "export_html", "find_cell", "is_done", "is_trained", "read_status",
    "request_stop", "run_cell", "run_grid", "share_theme_css", "status",
]
