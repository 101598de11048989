"""What counts as a collapse of prompt-following, and of which kind: one home for the rule that both
``diagnose`` (a user's checkpoint against its base) and the grid summaries (each run's last eval against its
epoch 0, ``learning.md``'s ``collapse`` column) apply.

A model has *lost the prompts* when its cross-prompt CLIP diversity at the same seeds fell below
:data:`COLLAPSE_DIVERSITY_RATIO` of the base's, or its prompt retrieval fell by :data:`COLLAPSE_RETRIEVAL_DROP`.
Its *kind* comes from the reward change, paired image by image over the same prompts and seeds with a z clustered
by prompt: a collapse that came with a higher reward maximised it (the #2113 story: a prompt-agnostic reward
pulled every prompt to its optimum), one whose reward fell broke the model (what a too-large step does; the
reward is not what pulled it there).
"""

from __future__ import annotations

import math

#: Collapse: cross-prompt CLIP diversity at the same seeds below this fraction of the base's ...
COLLAPSE_DIVERSITY_RATIO = 0.95
#: ... or prompt retrieval accuracy this much below the base's (absolute).
COLLAPSE_RETRIEVAL_DROP = 0.10
#: A collapse whose paired reward change has a z (clustered by prompt) of at least this maximised the reward; at
#: most minus this, the model broke.
REWARD_CHANGE_Z = 2.0

#: The kinds :func:`collapse_kind` returns.
KEPT, MAXIMISED, BROKE, UNCLEAR = "kept prompts", "maximised", "broke", "no reward change"


#: Float slack of the comparisons: a drop of exactly the threshold (retrieval 0.9 -> 0.8) counts, whatever the
#: rounding of the subtraction (0.9 - 0.8 is 0.0999...98 in floats).
TOLERANCE = 1e-9


def diversity_lost(diversity_ratio: float, threshold: float = COLLAPSE_DIVERSITY_RATIO) -> bool:
    """Cross-prompt diversity (tuned / base) below ``threshold``."""
    return bool(diversity_ratio < threshold - TOLERANCE)


def dropped(drop: float, threshold: float = COLLAPSE_RETRIEVAL_DROP) -> bool:
    """A measure (base - tuned) fell by ``threshold`` or more (retrieval; the guard's judge all-correct too)."""
    return bool(drop >= threshold - TOLERANCE)


def lost_prompts(diversity_ratio: float, retrieval_drop: float) -> bool:
    """Did the model lose the prompts: diversity ratio (tuned / base) or retrieval drop (base - tuned) past the
    thresholds above."""
    return diversity_lost(diversity_ratio) or dropped(retrieval_drop)


def collapse_kind(diversity_ratio: float, retrieval_drop: float, reward_z: float) -> str:
    """:data:`KEPT` if the prompts were not lost; else :data:`MAXIMISED`, :data:`BROKE` or :data:`UNCLEAR` (the
    reward change is within :data:`REWARD_CHANGE_Z` or unknown) by the paired reward change's z. NaN inputs give
    ``""`` (nothing to classify)."""
    if not (math.isfinite(diversity_ratio) and math.isfinite(retrieval_drop)):
        return ""
    if not lost_prompts(diversity_ratio, retrieval_drop):
        return KEPT
    if math.isfinite(reward_z) and reward_z >= REWARD_CHANGE_Z:
        return MAXIMISED
    if math.isfinite(reward_z) and reward_z <= -REWARD_CHANGE_Z:
        return BROKE
    return UNCLEAR
