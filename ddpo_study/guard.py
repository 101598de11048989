"""The guard: stop training at the first eval where the prompts are being lost.

The study's most practical result is that nothing done at inference time was shown better than stopping earlier
at the same reward, so the trainer can stop itself. At each eval the rule of :mod:`ddpo_study.collapse` is
applied against the run's epoch-0 eval (the same prompts and seeds, so the comparison is image by image):

* cross-prompt CLIP distance below ``cross_prompt_ratio`` of epoch 0's (collapse's 0.95), or
* prompt retrieval ``retrieval_drop`` or more below epoch 0's (collapse's 0.10, absolute), or
* on toy prompts, judge all-correct ``judge_drop`` or more below epoch 0's (the CLIP-free referee; 0 = unused).

When any fires, training stops; ``final/`` keeps the weights of the last eval that passed (the trainer exports
them at every passing eval), ``metrics.csv`` has the ``guard_*`` columns at every eval and ``guard_fired`` at the
stopping one, and ``DONE`` records the stop (``rundir.write_done``). The defaults and the evidence for them are in
``docs/guard.md`` (``results/guard_thresholds/``). The same rule watches other trainers' checkpoints
(:mod:`ddpo_study.monitor`, ``monitor --watch``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .collapse import COLLAPSE_DIVERSITY_RATIO, COLLAPSE_RETRIEVAL_DROP, diversity_lost, dropped

#: The eval metrics each part of the rule reads (``evaluation.evaluate``'s names).
CROSS_PROMPT, RETRIEVAL, JUDGE = "cross_div_clip", "retrieval_acc", "judge_all"


@dataclass(frozen=True)
class StopCheck:
    """One eval read against epoch 0: the three measures and which parts of the rule fired (empty: it passed)."""

    epoch: int
    cross_prompt_ratio: float
    retrieval_drop: float
    judge_drop: float
    fired: tuple[str, ...] = ()

    def columns(self) -> dict[str, Any]:
        """The ``metrics.csv`` columns of this check (``guard_fired`` is '' when it passed)."""
        return {"guard_cross_ratio": self.cross_prompt_ratio, "guard_retrieval_drop": self.retrieval_drop,
                "guard_judge_drop": self.judge_drop, "guard_fired": "+".join(self.fired)}

    def line(self) -> str:
        """One readable line, e.g. ``epoch 20: prompts being lost (cross_prompt) - cross-prompt 0.94 of epoch 0, ...``."""
        judge = "" if math.isnan(self.judge_drop) else f", judge all-correct {-self.judge_drop:+.2f}"
        state = f"prompts being lost ({', '.join(self.fired)})" if self.fired else "prompts kept"
        return (f"epoch {self.epoch}: {state} - cross-prompt {self.cross_prompt_ratio:.2f} of epoch 0, "
                f"retrieval {-self.retrieval_drop:+.2f}{judge}")


@dataclass(frozen=True)
class StopRule:
    """Thresholds of the guard (a config's ``stop_*`` fields)."""

    cross_prompt_ratio: float = COLLAPSE_DIVERSITY_RATIO
    retrieval_drop: float = COLLAPSE_RETRIEVAL_DROP
    judge_drop: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "StopRule":
        return cls(cfg.stop_cross_prompt_ratio, cfg.stop_retrieval_drop, cfg.stop_judge_drop)

    def check(self, row: Mapping[str, Any], base: Mapping[str, Any]) -> StopCheck:
        """Read eval ``row`` against the epoch-0 eval ``base`` (both ``metrics.csv`` rows)."""
        ratio = _get(row, CROSS_PROMPT) / _get(base, CROSS_PROMPT) if _get(base, CROSS_PROMPT) > 0 else math.nan
        retrieval = _get(base, RETRIEVAL) - _get(row, RETRIEVAL)
        judge = _get(base, JUDGE) - _get(row, JUDGE)  # NaN outside the toy grammar: that part never fires
        fired = []
        if diversity_lost(ratio, self.cross_prompt_ratio):  # the comparisons of collapse.lost_prompts
            fired.append("cross_prompt")
        if dropped(retrieval, self.retrieval_drop):
            fired.append("retrieval")
        if self.judge_drop > 0 and dropped(judge, self.judge_drop):
            fired.append("judge")
        return StopCheck(int(row["epoch"]), ratio, retrieval, judge, tuple(fired))


def _get(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return math.nan if value is None else float(value)
