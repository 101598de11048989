"""Every figure that README.md and docs/*.md embed, rebuilt from committed data by one command
(``python -m ddpo_study figures``, ``make figures``).

:func:`embedded_figures` finds the embedded images (``![alt](path)``, paths relative to their page);
:func:`plan` maps each to the :class:`Producer` that makes it and fails with one line naming any embedded figure
no producer makes (a new figure in the docs needs its producer here first); :func:`rebuild` runs each producer
once. The producers only read committed files:

* a grid summary's figure (``results/<grid>/summary/<name>.png``): :func:`~.summary.write_summary` of that grid
  (its tables too, without the notebook): byte-identical on a re-run and in a clone;
* a monitor dashboard (``results/<example>/dashboard.png``): :func:`ddpo_study.dashboard.draw` from the
  committed ``monitor.csv`` beside it;
* a diagnosis' image grid (``results/<example>/images_<seeds>.png``): the tuned model's and the base's samples,
  re-drawn from the committed adapter. Sampling on another CPU can move a pixel by one level of 255, so such a
  file is rewritten only when it differs by more (:data:`~ddpo_study.images.FLOAT_NOISE_LEVELS`, as ``demo``
  does): a re-run leaves ``git status`` clean.
"""

from __future__ import annotations

import csv
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..grid.spec import REPO_ROOT

#: The pages whose embedded figures the command rebuilds (relative to the repository root; globs).
PAGES = ("README.md", "docs/*.md")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")

#: The monitor examples: output folder -> the folder that was watched (its name titles the dashboard; docs/guard.md
#: has the command that made it).
MONITOR_EXAMPLES = {"results/guard_example": "runs/guard_example"}
#: The diagnosis examples: output folder -> (base model, tuned model) as given to ``diagnose`` (docs/diagnose.md has
#: the command that made it; every other option at its default).
DIAGNOSE_EXAMPLES = {"results/diagnose_plateau_lora-s5": ("toy", "results/toy_plateau/lora-s5")}


class FiguresError(RuntimeError):
    """An embedded figure that no producer makes, or one that its producer did not write."""


# ================================================================================================ finding them
def embedded_figures(root: Path = REPO_ROOT, pages: Sequence[str] = PAGES) -> dict[str, list[str]]:
    """Repository-relative path of every local image the pages embed -> the pages that embed it, in page order."""
    root = Path(root)
    out: dict[str, list[str]] = {}
    for pattern in pages:
        for page in sorted(root.glob(pattern)):
            for target in _IMAGE.findall(page.read_text(encoding="utf-8")):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s): not ours to rebuild
                    continue
                path = (page.parent / target.split("#")[0]).resolve()
                try:
                    rel = path.relative_to(root.resolve()).as_posix()
                except ValueError:
                    rel = target  # outside the repository: no producer claims it
                out.setdefault(rel, []).append(page.relative_to(root).as_posix())
    return out


# ================================================================================================ the producers
@dataclass(frozen=True)
class Producer:
    """What makes a set of figures: ``pattern`` (a regex over repository-relative paths) claims them; ``run(root,
    key, paths)`` rebuilds the claimed ``paths`` of one ``key`` (the pattern's ``key`` group: a grid, an example
    folder) and returns one line saying what it did and the files it wrote or kept."""

    name: str
    pattern: str
    run: Callable[[Path, str, list[str]], tuple[str, list[Path]]]

    def key(self, path: str) -> str | None:
        m = re.fullmatch(self.pattern, path)
        return m.group("key") if m else None


def _summary(root: Path, key: str, paths: list[str]) -> tuple[str, list[Path]]:
    from .summary import write_summary

    # every figure and table of the summary, as `summary --no-notebook` writes them: one grid, one call
    summary = write_summary(root / key)
    return f"{key}/summary: {len(summary.files)} files (write_summary)", summary.files


def _dashboard(root: Path, key: str, paths: list[str]) -> tuple[str, list[Path]]:
    from ..dashboard import draw
    from ..watch import CSV_FILE

    with open(root / key / CSV_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    # titled by the watched folder's name, as `monitor --watch` titles it
    png = draw(rows, root / key, title=f"monitor: {Path(MONITOR_EXAMPLES[key]).name}")
    return f"{key}: dashboard from {CSV_FILE} ({len(rows)} rows)", [png]


def _diagnose_images(root: Path, key: str, paths: list[str]) -> tuple[str, list[Path]]:
    from .. import diagnose

    base, tuned = DIAGNOSE_EXAMPLES[key]
    dx = diagnose.prepare(base, root / tuned)  # nothing sampled yet: only the grids asked for are
    lines, files = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            seeds = re.fullmatch(r"images_(.+)\.png", Path(path).name).group(1)
            if seeds not in diagnose.SEED_MODES:
                continue  # not a grid diagnose draws: rebuild() names it
            diagnose.fig_images(dx, seeds, save_to=tmp)
            lines.append(f"{Path(path).name} {keep_or_replace(Path(tmp) / Path(path).name, root / path)}")
            files.append(root / path)
    return f"{key}: {tuned} and its base ({base}) sampled: " + ", ".join(lines), files


def keep_or_replace(new: Path, committed: Path) -> str:
    """Move ``new`` over ``committed`` unless the two images differ by float noise only (at most
    :data:`~ddpo_study.images.FLOAT_NOISE_LEVELS` of 255 levels per pixel; sampling on another CPU can do that);
    says which it did."""
    from PIL import Image

    from ..images import FLOAT_NOISE_LEVELS, pixel_difference

    with Image.open(new) as image:
        diff = pixel_difference(committed, image)
    if diff is not None and diff <= FLOAT_NOISE_LEVELS:
        return "kept (the same pixels)" if diff == 0 else f"kept (float noise: {diff} of 255 levels)"
    committed.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(new), committed)
    return "rewritten"


PRODUCERS = (
    Producer("grid summary", r"(?P<key>results/[^/]+)/summary/[a-z_]+\.png", _summary),
    Producer("monitor dashboard", r"(?P<key>{})/dashboard\.png".format("|".join(map(re.escape, MONITOR_EXAMPLES))),
             _dashboard),
    Producer("diagnosis images", r"(?P<key>{})/images_[a-z_]+\.png".format(
        "|".join(map(re.escape, DIAGNOSE_EXAMPLES))), _diagnose_images),
)


# ================================================================================================ running them
def plan(root: Path = REPO_ROOT, pages: Sequence[str] = PAGES,
         producers: Sequence[Producer] = PRODUCERS) -> dict[tuple[Producer, str], list[str]]:
    """(producer, key) -> the embedded figures it makes; :class:`FiguresError` (one line) for any that none makes."""
    jobs: dict[tuple[Producer, str], list[str]] = {}
    orphans = []
    for path, where in embedded_figures(root, pages).items():
        claim = next(((p, k) for p in producers if (k := p.key(path)) is not None), None)
        if claim is None:
            orphans.append(f"{path} (embedded in {', '.join(where)})")
        else:
            jobs.setdefault(claim, []).append(path)
    if orphans:
        raise FiguresError(f"no producer makes {'; '.join(orphans)}: add one to ddpo_study/report/figures_index.py")
    return jobs


def rebuild(root: Path = REPO_ROOT, pages: Sequence[str] = PAGES, producers: Sequence[Producer] = PRODUCERS,
            echo: Callable[[str], None] | None = print) -> list[str]:
    """Run every producer the pages need, once each; returns the figures, and fails (:class:`FiguresError`) if a
    producer did not write (or keep) one of the figures it claimed."""
    root = Path(root)
    echo = echo or (lambda _line: None)
    done = []
    for (producer, key), paths in plan(root, pages, producers).items():
        line, files = producer.run(root, key, paths)
        echo(line)
        made = {Path(f).resolve() for f in files}
        missing = [p for p in paths if (root / p).resolve() not in made]
        if missing:
            raise FiguresError(f"{producer.name} for {key} does not make {', '.join(missing)}")
        done += paths
    return done
