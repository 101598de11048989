"""A line per eval while a cell trains: papermill runs the cell's notebook in a kernel whose output nobody sees
until it ends, so the runner reads the cell's ``metrics.csv`` (written atomically after every epoch) beside it.

    toy_30-lora-lam0.0-s0: epoch 5/20  eval reward 5.412 (+0.081)  cross-prompt 0.991  retrieval 1.00
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import pandas as pd

from ..rundir import METRICS_FILE

#: Seconds between two looks at a running cell's metrics.
INTERVAL_S = 10.0


def eval_lines(metrics: pd.DataFrame, name: str, num_epochs: int, after_epoch: int = -1) -> list[str]:
    """The progress lines of the eval rows of ``metrics`` after ``after_epoch`` (gains against epoch 0)."""
    if "reward_mean" not in metrics or metrics.empty:
        return []
    ev = metrics.dropna(subset=["reward_mean"]).sort_values("epoch")
    base = ev["reward_mean"].iloc[0] if len(ev) and ev["epoch"].iloc[0] == 0 else float("nan")
    lines = []
    for row in ev[ev["epoch"] > after_epoch].itertuples():
        line = f"{name}: epoch {int(row.epoch)}/{num_epochs}  eval reward {row.reward_mean:.3f}"
        if row.epoch > 0 and base == base:
            line += f" ({row.reward_mean - base:+.3f})"
        for key, label, fmt in (("cross_div_clip", "cross-prompt", ".3f"), ("retrieval_acc", "retrieval", ".2f")):
            value = getattr(row, key, None)
            if value is not None and value == value:
                line += f"  {label} {value:{fmt}}"
        lines.append(line)
    return lines


class CellProgress:
    """While the ``with`` block runs, print (``echo``) a line for each new eval row of ``cell_dir``'s metrics."""

    def __init__(self, cell_dir: Path, name: str, num_epochs: int, echo: Callable[[str], None] | None = None,
                 interval: float = INTERVAL_S):
        self.path, self.name, self.num_epochs, self.interval = Path(cell_dir) / METRICS_FILE, name, num_epochs, interval
        self.echo = echo or (lambda msg: print(msg, flush=True))
        self.seen = self._last_epoch()  # a resumed cell: only what it adds from now on
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _read(self) -> pd.DataFrame:
        try:
            return pd.read_csv(self.path)
        except (OSError, ValueError, pd.errors.ParserError):  # not there yet, or being replaced
            return pd.DataFrame()

    def _last_epoch(self) -> int:
        df = self._read()
        return int(df["epoch"].max()) if "epoch" in df and len(df) else -1

    def poll(self) -> None:
        df = self._read()
        for line in eval_lines(df, self.name, self.num_epochs, self.seen):
            self.echo(line)
        if "reward_mean" in df and df["reward_mean"].notna().any():
            self.seen = max(self.seen, int(df.dropna(subset=["reward_mean"])["epoch"].max()))

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self) -> "CellProgress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()  # the last evals, written after the last look
