"""A grid spec: reading and validating it (:func:`load_spec`), its cells (:func:`expand`), ``--shard``/``--match``,
and finding the spec of a results folder (:func:`find_spec`).

The spec format and the rules for cells are in the :mod:`ddpo_study.grid` docstring; the ``questions:``
section is read by :func:`ddpo_study.grid.questions.parse_questions`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..config import ConfigError, DDPOConfig
from .errors import GridError
from .questions import Extension, Question, parse_extension, parse_questions, same_value

REPO_ROOT = Path(__file__).resolve().parents[2]

SPEC_KEYS = ("name", "description", "notebook", "output_root", "cell_name", "fixed", "axes", "variants", "quick",
             "questions", "exclude", "keep_unet", "keep_report", "keep_eval",
             "keep_lora", "frontier_remedies", "pool_with", "extension")
QUICK_SPECIAL = ("output_root", "cell_name", "variants")
RUNNER_KEYS = ("output_dir",)  # set by the runner, never by a spec
VARIANT_KEY = "variant"


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
    questions: list["Question"] | None = None  # None: the spec has no ``questions:`` section
    exclude: list[dict[str, list[Any]]] = field(default_factory=list)  # axis combinations that are not run
    keep_unet: dict[str, list[Any]] | None = None  # cells whose final full UNet is committed (None: none)
    keep_report: dict[str, list[Any]] | None = None  # cells whose report.html is committed (None: all)
    keep_eval: dict[str, list[Any]] | None = None  # cells whose eval images are committed (None: all)
    keep_lora: dict[str, list[Any]] | None = None  # cells whose final LoRA adapter is committed (None: all)
    frontier_remedies: Path | None = None  # an inference-remedies output folder whose points join the frontier
    pool_with: dict[str, Path] = field(default_factory=dict)  # question id -> another grid's folder (report.pooled)
    extension: Extension | None = None  # the seed-extension rule (grid.questions.Extension); None: the spec has none


@dataclass
class Cell:
    """One grid cell: its position, name, folder and the config it runs with."""

    index: int
    name: str
    dir: Path
    params: dict[str, Any]  # its DDPOConfig values (output_dir included): the cell notebook's one parameter
    variant: str | None = None
    threads_from_spec: bool = False
    keep_unet: bool = False  # commit final/unet (spec's keep_unet)
    keep_report: bool = True  # commit report.html (spec's keep_report)
    keep_eval: bool = True  # commit the epoch-0 and final eval images (spec's keep_eval)
    keep_lora: bool = True  # commit final/lora (spec's keep_lora)

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
    questions = None  # validated against the full grid, before --quick pins axes
    if "questions" in data:
        questions = parse_questions(data["questions"], axes, _variant_labels(variants), fixed.get("seed"))
    # "variant" may be named beside the axes (a variant grid's per-variant seeds, say); quick may drop variants
    # later, so the names are checked against the full list.
    selectable = {**axes, **({VARIANT_KEY: _variant_labels(variants)} if variants else {})}
    exclude = [_partial_assignment(e, selectable, "exclude") for e in _as_list(data.get("exclude"), "exclude")]
    keep_unet, keep_report, keep_eval, keep_lora = (_keep(data, key, selectable)
                                                     for key in ("keep_unet", "keep_report", "keep_eval", "keep_lora"))
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
    frontier_remedies = data.get("frontier_remedies")
    if frontier_remedies is not None and not isinstance(frontier_remedies, str):
        raise GridError(f"frontier_remedies in {source or 'the spec'} must be a folder path (a string), "
                        f"got {frontier_remedies!r}")
    frontier_remedies = _resolve(frontier_remedies) if frontier_remedies else None
    pool_with = data.get("pool_with") or {}
    if not isinstance(pool_with, dict) or not all(isinstance(v, str) for v in pool_with.values()):
        raise GridError(f"pool_with in {source or 'the spec'} must map question ids to folder paths, got {pool_with!r}")
    unknown_ids = [k for k in pool_with if k not in {q.id for q in questions or []}]
    if unknown_ids:
        raise GridError(f"pool_with in {source or 'the spec'} names no question {unknown_ids[0]!r}")
    pool_with = {str(k): _resolve(v) for k, v in pool_with.items()}
    extension = None
    if data.get("extension") is not None:  # read against the full seed axis, before --quick pins it
        seed_axis = _as_axis("seed", axes_raw["seed"]) if "seed" in axes_raw else [fixed.get("seed")]
        extension = parse_extension(data["extension"], seed_axis, questions)
    return GridSpec(name=str(data.get("name") or (source.stem if source else "grid")),
                    notebook=_resolve(data["notebook"]), output_root=_resolve(output_root), cell_name=str(cell_name),
                    fixed=fixed, axes=axes, variants=variants, quick=quick_over,
                    description=str(data.get("description") or ""), source=source, is_quick=quick,
                    questions=questions, exclude=exclude, keep_unet=keep_unet, keep_report=keep_report,
                    keep_eval=keep_eval, keep_lora=keep_lora, frontier_remedies=frontier_remedies,
                    pool_with=pool_with, extension=extension)


def _keep(data: dict[str, Any], key: str, selectable: dict[str, list[Any]]) -> dict[str, list[Any]] | None:
    """A ``keep_*`` key: the axis values of the cells it selects, or None when absent (its default)."""
    if data.get(key) is None:
        return None
    if not isinstance(data[key], dict) or not data[key]:
        raise GridError(f"{key!r} must map axes (or 'variant') to the values of the cells it selects, got "
                        f"{data[key]!r}; leave it out for its default")
    return _partial_assignment(data[key], selectable, key)


def _as_list(value: Any, key: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise GridError(f"{key!r} must be a list of mappings from axis names to values")
    return value


def _partial_assignment(raw: Any, axes: dict[str, list[Any]], key: str) -> dict[str, list[Any]]:
    """``{axis: value or [values]}`` validated against the axes (and ``variant`` names) -> ``{axis: [values]}``."""
    if not isinstance(raw, dict) or not raw:
        raise GridError(f"{key!r}: each entry must be a non-empty mapping of axis names to values, got {raw!r}")
    out = {}
    for axis, values in raw.items():
        if axis not in axes:
            raise GridError(f"{key!r}: {axis!r} is not an axis (axes: {list(axes)})")
        values = values if isinstance(values, list) else [values]
        bad = [v for v in values if not any(same_value(v, a) for a in axes[axis])]
        if bad:
            raise GridError(f"{key!r}: {axis}={bad} is not a value of the axis ({axes[axis]})")
        out[axis] = values
    return out


def _matches(assignment: dict[str, list[Any]], values: dict[str, Any]) -> bool:
    return all(axis in values and any(same_value(values[axis], v) for v in allowed)
               for axis, allowed in assignment.items())


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


def _variant_labels(variants: Any) -> list[str]:
    if not isinstance(variants, list):
        return []
    return [_variant_label(v) for v in variants if isinstance(v, dict)]


def expand(spec: GridSpec) -> list[Cell]:
    """All cells of ``spec`` in their deterministic order, each validated (see :mod:`ddpo_study.grid`)."""
    config_fields = [f.name for f in dataclasses.fields(DDPOConfig)]
    variants = spec.variants or [None]

    def check_keys(keys: Iterable[str], where: str) -> None:
        for key in keys:
            if key in RUNNER_KEYS:
                raise GridError(f"{where}: {key!r} is set by the grid runner (<output_root>/<cell name>), "
                                "not by the spec")
            if key not in config_fields:
                raise GridError(f"{where}: {key!r} is not a DDPOConfig field (ddpo_study/config.py)"
                                + _close_hint(key, config_fields))

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
            label = None if variant is None else _variant_label(variant)
            at = {**dict(zip(spec.axes, combo)), **({} if label is None else {VARIANT_KEY: label})}
            if any(_matches(e, at) for e in spec.exclude):
                continue
            index = len(cells)
            params = {**spec.fixed, **dict(zip(spec.axes, combo))}
            if variant is not None:
                params.update({k: v for k, v in variant.items() if k != VARIANT_KEY})
            where = f"cell #{index} ({', '.join(f'{k}={v!r}' for k, v in zip(spec.axes, combo))}" + (
                f", variant {label!r})" if label is not None else ")")
            try:
                cfg = DDPOConfig.from_dict({**params, "output_dir": "placeholder"})
            except ConfigError as err:
                raise GridError(f"{where}: invalid config: {err}") from err
            values = cfg.to_dict()
            params.update({k: values[k] for k in params})  # e.g. YAML's "3e-4" string -> 0.0003
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
                              threads_from_spec="num_threads" in params,
                              keep_unet=spec.keep_unet is not None and _matches(spec.keep_unet, at),
                              keep_report=spec.keep_report is None or _matches(spec.keep_report, at),
                              keep_eval=spec.keep_eval is None or _matches(spec.keep_eval, at),
                              keep_lora=spec.keep_lora is None or _matches(spec.keep_lora, at)))
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


def select_match(cells: list[Cell], patterns: str | Iterable[str] | None) -> list[Cell]:
    """The cells whose name matches one of ``patterns`` (shell-style, e.g. ``lora-base-*``; a string is split at
    commas), in grid order. A pattern that matches no cell is a :class:`GridError`: a typo must not silently run
    nothing."""
    if patterns is None:
        return list(cells)
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",") if p.strip()]
    patterns = list(patterns)
    if not patterns:
        raise GridError("--match needs at least one cell-name pattern")
    names = [c.name for c in cells]
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(name, pat) for name in names):
            raise GridError(f"--match {pat!r} matches no cell" + _close_hint(pat, set(names)))
    return [c for c in cells if any(fnmatch.fnmatchcase(c.name, pat) for pat in patterns)]


def find_spec(root: str | Path, configs: str | Path | None = None) -> GridSpec | None:
    """The spec (``configs/*.yaml``, plain or ``--quick``) whose output_root is ``root``; None if none is.

    The summary uses it to read a grid's pre-registered questions from its results folder alone."""
    root = _resolve(root).resolve()
    for path in sorted(Path(configs or REPO_ROOT / "configs").glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        if not isinstance(data, dict):
            continue
        quick = data.get("quick") if isinstance(data.get("quick"), dict) else {}
        for is_quick, out in ((False, data.get("output_root")), (True, quick.get("output_root"))):
            if out and _resolve(out).resolve() == root:
                return load_spec(path, quick=is_quick)
    return None
