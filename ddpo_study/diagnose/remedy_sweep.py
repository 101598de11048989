"""Sweeping a grid's finished runs with the inference-time remedies of :mod:`.curves`, run by run, resumably.

A :class:`RemedySpec` (``configs/inference_remedies.yaml``) names a grid, the config values of the runs to sweep,
the LoRA scales and the switch steps. :func:`sweep_run` samples one run at *its own* eval protocol (its eval
prompts and seeds, steps, guidance and eta, via :func:`~ddpo_study.diagnose.sampling.prepare` on the run folder), so
every point compares image for image with the run's training evals; its scale-1 and scale-0 points must
reproduce the run's final and epoch-0 evals, and the ``check_*`` columns say by how much they do.
:func:`run_remedies` appends one run at a time to ``<output>/points.csv`` and skips runs already there, so an
interrupted sweep resumes. The analysis (files only) is :mod:`ddpo_study.report.remedies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..atomic import atomic_path
from ..grid.questions import same_value
from ..report.remedies import POINTS_FILE  # the analysis' input: its home is where it is read
from ..rundir import has_done, read_config

REMEDIES = ("scale", "switch")  #: the LoRA scaled by ``value``; the base UNet for the first ``value`` steps


class RemedySpecError(ValueError):
    """A remedy spec that cannot be used; the message names the key."""


@dataclass(frozen=True)
class RemedySpec:
    """Which runs to sweep, with which remedies, and what the analysis reads (pre-registered)."""

    name: str  #: the sweep's name
    grid: str  #: the grid spec whose finished cells are swept
    where: dict[str, Any]  #: config values a swept run must have (e.g. ``mode: lora``)
    scales: tuple[float, ...]  #: LoRA scales strictly between 0 and 1 (0 and 1 are always sampled, as checks)
    switch_steps: tuple[int, ...]  #: base-model steps k before the tuned UNet takes over, 0 < k < the run's steps
    primary: tuple[tuple[str, float], ...]  #: the primary (remedy, value) points
    metrics: tuple[str, ...]  #: metrics read at matched reward; the first is the primary metric
    output: str  #: folder of ``points.csv`` and the summary

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RemedySpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise RemedySpecError(f"unknown remedy spec key(s) {unknown}; known: {sorted(known)}")
        missing = sorted(known - set(raw))
        if missing:
            raise RemedySpecError(f"remedy spec is missing {missing}")
        scales = tuple(float(s) for s in raw["scales"])
        if any(not 0 < s < 1 for s in scales):
            raise RemedySpecError(f"scales must lie strictly between 0 and 1, got {list(scales)}")
        switch = tuple(int(k) for k in raw["switch_steps"])
        if any(k <= 0 for k in switch):
            raise RemedySpecError(f"switch_steps must be > 0, got {list(switch)}")
        primary = []
        for item in raw["primary"]:
            if not isinstance(item, dict) or set(item) != {"remedy", "value"} or item["remedy"] not in REMEDIES:
                raise RemedySpecError(f"each primary point is {{remedy: {'|'.join(REMEDIES)}, value: ...}}, got {item!r}")
            primary.append((str(item["remedy"]), float(item["value"])))
        for remedy, value in primary:
            swept = scales if remedy == "scale" else switch
            if not any(abs(value - v) < 1e-9 for v in swept):
                raise RemedySpecError(f"primary point {remedy} {value:g} is not among the swept values {list(swept)}")
        metrics = tuple(str(m) for m in raw["metrics"])
        if not metrics:
            raise RemedySpecError("metrics must name at least one metric")
        if not isinstance(raw["where"], dict):
            raise RemedySpecError(f"where must map config keys to values, got {raw['where']!r}")
        from ..grid.spec import _resolve

        return cls(str(raw["name"]), str(_resolve(raw["grid"])), dict(raw["where"]), scales, switch, tuple(primary),
                   metrics, str(_resolve(raw["output"])))  # both relative to the repository, as a grid's paths

    def points(self) -> set[tuple[str, float]]:
        """Every (remedy, value) a swept run has: the scales with 0 and 1 (the checks), and the switch steps."""
        return {("scale", 0.0), ("scale", 1.0), *(("scale", s) for s in self.scales),
                *(("switch", float(k)) for k in self.switch_steps)}


def load_remedy_spec(path: str | Path) -> RemedySpec:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise RemedySpecError(f"remedy spec not found: {path}")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise RemedySpecError(f"{path}: a remedy spec is a mapping of keys, got {type(raw).__name__}")
    return RemedySpec.from_dict(raw)


def selected_runs(spec: RemedySpec) -> list[Path]:
    """The grid's finished cells (``DONE``) whose config has every value of ``spec.where``, by name; one per seed."""
    from ..grid.spec import load_spec
    from ..report.results import find_cells

    grid = load_spec(spec.grid)
    out = []
    for cell in find_cells(grid.output_root):
        if not has_done(cell):
            continue
        cfg = read_config(cell)
        for key in spec.where:
            if key not in cfg:
                raise RemedySpecError(f"where: {key!r} is not a config key of {cell.name}")
        if all(same_value(cfg[k], v) for k, v in spec.where.items()):
            out.append((cell, cfg["seed"]))
    seeds = [seed for _, seed in out]
    if len(set(seeds)) < len(seeds):  # seeds are the pairing unit: one run each
        raise RemedySpecError(f"where: {spec.where} selects several runs of one seed ({sorted(seeds)}); name every "
                              "factor that differs between them")
    return [cell for cell, _ in out]


def sweep_run(run_dir: str | Path, spec: RemedySpec, device: str = "auto") -> pd.DataFrame:
    """One row per remedy point of one run (scale 0 and 1 included), with the checks against its evals."""
    from ..report.results import read_cell
    from .curves import scale_sweep, switch_sweep
    from .sampling import prepare

    run_dir = Path(run_dir)
    cfg, metrics = read_cell(run_dir)
    bad = [k for k in spec.switch_steps if k >= int(cfg["num_steps"])]
    if bad:
        raise RemedySpecError(f"switch_steps {bad} are not below {run_dir.name}'s {cfg['num_steps']} DDIM steps")
    dx = prepare(None, run_dir, num_prompts=int(cfg["eval_num_prompts"]), num_seeds=int(cfg["eval_num_seeds"]),
               device=device, batch_size=int(cfg["sample_batch_size"]))
    scale = scale_sweep(dx, (0.0, *spec.scales, 1.0)).rename(columns={"scale": "value"}).assign(remedy="scale")
    switch = switch_sweep(dx, list(spec.switch_steps)).drop(columns="base_fraction")
    switch = switch.rename(columns={"base_steps": "value"}).assign(remedy="switch")
    ev = metrics.dropna(subset=["reward_mean"]).sort_values("epoch")
    first, final = ev.iloc[0], ev.iloc[-1]
    at = lambda df, v: float(df.loc[df["value"] == v, "reward_mean"].iloc[0])  # noqa: E731
    checks = {"final_epoch": int(final["epoch"]), "check_final_reward_diff": at(scale, 1.0) - float(final["reward_mean"]),
              "check_base_reward_diff": at(scale, 0.0) - float(first["reward_mean"])}
    rows = pd.concat([scale, switch], ignore_index=True)
    rows.insert(0, "cell", run_dir.name)
    rows.insert(1, "seed", int(cfg["seed"]))
    return rows.assign(**checks)


def run_remedies(spec: RemedySpec, device: str = "auto", log=print) -> Path:
    """Sweep every selected run whose points in ``<output>/points.csv`` do not cover the spec's (a run swept
    with other values is swept again and its rows replaced); returns that file."""
    out = Path(spec.output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / POINTS_FILE
    runs = selected_runs(spec)
    if not runs:
        raise RemedySpecError(f"no finished cell of {spec.grid} has {spec.where}")
    for run in runs:
        old = pd.read_csv(path) if path.is_file() else None
        have = set() if old is None else {(r, float(v)) for r, v in old.loc[old["cell"] == run.name,
                                                                             ["remedy", "value"]].itertuples(index=False)}
        if spec.points() <= have:
            continue
        rows = sweep_run(run, spec, device)
        table = rows if old is None else pd.concat([old[old["cell"] != run.name], rows], ignore_index=True)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)  # one whole run at a time: an interruption loses at most the run being swept
        worst = max(abs(rows["check_final_reward_diff"].iloc[0]), abs(rows["check_base_reward_diff"].iloc[0]))
        log(f"{run.name}: {len(rows)} points; |reward - own eval| at scale 0 and 1 <= {worst:.2g}"
            + ("" if math.isfinite(worst) else " (no eval to check against)"))
    return path
