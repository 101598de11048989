"""The monitor's dashboard: reward (when one is scored), cross-prompt distance and prompt retrieval per checkpoint,
the base model first, with the stop rule's thresholds drawn where they sit (:mod:`ddpo_study.collapse`); one PNG
and a tiny HTML page showing it, redrawn by ``monitor --watch`` after every checkpoint."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Sequence

from .atomic import write_text
from .collapse import COLLAPSE_DIVERSITY_RATIO, COLLAPSE_RETRIEVAL_DROP

PNG_FILE, HTML_FILE = "dashboard.png", "dashboard.html"
#: Row statuses written by the watcher (:mod:`ddpo_study.watch`).
BASE, KEPT, LOST, UNREADABLE = "base", "kept", "lost", "unreadable"
_STYLE = {BASE: dict(marker="*", color="black", s=90, label="base"),
          KEPT: dict(marker="o", color="tab:blue", s=28, label="prompts kept"),
          LOST: dict(marker="X", color="tab:red", s=40, label="prompts being lost")}


def _value(row: dict, key: str) -> float:
    try:
        return float(row.get(key, "") or "nan")
    except ValueError:
        return math.nan


def draw(rows: Sequence[dict], out: str | Path, title: str = "", refresh_s: float | None = None) -> Path:
    """Write ``<out>/dashboard.png`` and ``dashboard.html`` from the watcher's rows (``monitor.csv``'s, values as
    text); the base row is drawn at step 0. ``refresh_s`` makes the page reload itself while a watch runs."""
    from .report.plotting import new_figure, save_figure, style

    out = Path(out)
    base = next((r for r in rows if r.get("status") == BASE), None)
    read = [r for r in rows if r.get("status") in _STYLE]
    panels = [("cross_div_clip", "cross-prompt CLIP distance"), ("retrieval_acc", "prompt retrieval")]
    if any(math.isfinite(_value(r, "reward_mean")) for r in read):
        panels.insert(0, ("reward_mean", "reward"))
    with style():
        fig = new_figure(3.4 * len(panels), 2.8)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (key, label) in zip(axes, panels):
            ordered = sorted(read, key=lambda r: (r["status"] != BASE, _value(r, "step")))
            xs = [0.0 if r["status"] == BASE else _value(r, "step") for r in ordered]
            ax.plot(xs, [_value(r, key) for r in ordered], color="0.6", lw=1, zorder=1)
            for status, kw in _STYLE.items():
                pts = [(x, _value(r, key)) for x, r in zip(xs, ordered) if r["status"] == status]
                if pts:  # the markers' legend once, in the first panel; each panel's legend names its lines
                    ax.scatter(*zip(*pts), zorder=2, **{**kw, "label": kw["label"] if ax is axes[0] else None})
            for r in rows:  # unreadable checkpoints: where they were, without a value
                if r.get("status") == UNREADABLE:
                    ax.axvline(_value(r, "step"), color="0.8", ls=":", lw=1, zorder=0)
            if base is not None and key == "cross_div_clip":
                ax.axhline(COLLAPSE_DIVERSITY_RATIO * _value(base, key), color="tab:red", ls="--", lw=0.8,
                           label=f"stop: < {COLLAPSE_DIVERSITY_RATIO:g} x base")
            if base is not None and key == "retrieval_acc":
                ax.axhline(_value(base, key) - COLLAPSE_RETRIEVAL_DROP, color="tab:red", ls="--", lw=0.8,
                           label=f"stop: {COLLAPSE_RETRIEVAL_DROP:g} below base")
                ax.axhline(_value(base, "retrieval_chance"), color="0.5", ls=":", lw=0.8, label="chance")
            ax.set_xlabel("checkpoint step (base at 0)")
            ax.set_title(label)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best")
        if title:
            fig.suptitle(title, fontsize=9)
        png = save_figure(fig, out / PNG_FILE, formats=("png",))[0]
    write_text(out / HTML_FILE, _page(rows, title, refresh_s))
    return png


def _page(rows: Sequence[dict], title: str, refresh_s: float | None) -> str:
    """A page with the figure and one line per checkpoint (the CSV holds every metric)."""
    head = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    cells = []
    for r in rows:
        ratio, drop, reward = (_value(r, k) for k in ("cross_div_ratio", "retrieval_drop", "reward_mean"))
        fmt = lambda v, spec: format(v, spec) if math.isfinite(v) else ""  # noqa: E731
        cells.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r.get("checkpoint", ""), r.get("status", ""), fmt(ratio, ".2f"), fmt(_value(r, "retrieval_acc"), ".2f"),
            fmt(drop, "+.2f"), fmt(reward, ".3g"), r.get("error", ""))) + "</tr>")
    table = ("<table><tr><th>checkpoint</th><th>status</th><th>cross-prompt / base</th><th>retrieval</th>"
             "<th>retrieval drop</th><th>reward</th><th>error</th></tr>" + "".join(cells) + "</table>")
    return (f'<!doctype html><html><head><meta charset="utf-8">{head}<title>{html.escape(title or "monitor")}</title>'
            "<style>body{font-family:sans-serif;font-size:13px}td,th{padding:2px 8px;text-align:left}</style>"
            f'</head><body><h3>{html.escape(title or "monitor")}</h3><img src="{PNG_FILE}" alt="dashboard">'
            f"{table}<p>every metric: monitor.csv</p></body></html>\n")
