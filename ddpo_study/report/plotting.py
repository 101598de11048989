"""How figures look and are saved: a fixed style (not the user's matplotlibrc), figures made without pyplot,
and PNG/PDF files with fixed metadata, so the same figure gives the same bytes."""

from __future__ import annotations

import io
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Sequence

from ..atomic import write_bytes_if_changed

#: The plotting style, set explicitly so figures do not depend on the user's matplotlibrc.
_BASE_RC = {
    "font.family": "DejaVu Sans",
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "savefig.bbox": None,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 7,
    "legend.title_fontsize": 8,
    "lines.linewidth": 1.5,
    "svg.hashsalt": "ddpo-study",
    "pdf.compression": 6,
    "image.interpolation": "nearest",
}
PNG_METADATA = {"Software": "ddpo_study.report"}
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": "ddpo_study.report", "Creator": "ddpo_study.report"}


@contextmanager
def style():
    """seaborn's ``whitegrid`` style and ``notebook`` context plus fixed fonts/sizes, as an rc context."""
    import matplotlib
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"), **_BASE_RC}
    with matplotlib.rc_context(rc):
        yield


def styled(fn):
    @wraps(fn)
    def wrapper(*args, **kwargs):
        with style():
            return fn(*args, **kwargs)
    return wrapper


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, stem: str | Path, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """``<stem>.png`` and ``<stem>.pdf`` (or the ``formats`` given) with fixed metadata: the same figure gives the
    same bytes."""
    stem = Path(stem)
    out = []
    metadata = {"png": PNG_METADATA, "pdf": PDF_METADATA}
    with style():
        for ext in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, metadata=metadata[ext])
            path = stem.with_suffix("." + ext)
            write_bytes_if_changed(path, buf.getvalue())
            out.append(path)
    return out
