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
