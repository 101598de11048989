"""ddpo_study.collapse: lost prompts by diversity or retrieval, and the kind by the paired reward change's z."""

import math

import pytest

from ddpo_study.collapse import BROKE, KEPT, MAXIMISED, UNCLEAR, collapse_kind


@pytest.mark.parametrize("ratio, drop, z, kind", [
    (0.97, 0.05, 9.0, KEPT),  # a large gain, prompts kept: not a collapse
    (0.94, 0.00, 2.0, MAXIMISED),  # diversity just under 0.95, z at the threshold
    (0.99, 0.10, 5.0, MAXIMISED),  # retrieval drop at the threshold alone suffices
    (0.09, 0.97, -8.0, BROKE),  # toy_plateau lora-s5: one image for every prompt, reward far below the base
    (0.50, 0.50, -1.9, UNCLEAR),
    (0.50, 0.50, math.nan, UNCLEAR),  # no reward pairs: lost the prompts, kind unknown
    (math.nan, 0.5, 3.0, ""),
])
def test_collapse_kind(ratio, drop, z, kind):
    assert collapse_kind(ratio, drop, z) == kind


def test_a_drop_of_exactly_the_threshold_counts_despite_float_rounding():
    from ddpo_study.collapse import COLLAPSE_RETRIEVAL_DROP, dropped, lost_prompts

    assert 0.9 - 0.8 < COLLAPSE_RETRIEVAL_DROP  # the subtraction rounds below 0.1 ...
    assert dropped(0.9 - 0.8) and lost_prompts(1.0, 0.9 - 0.8)  # ... and still counts as the drop it is
    assert not dropped(0.1 - 1e-6) and not lost_prompts(0.95, 0.0)
