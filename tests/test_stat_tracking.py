"""Per-prompt and global advantages against hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddpo_study.stat_tracking import PerPromptStatTracker, global_advantages

EPS = 1e-6


def test_per_prompt_tracking_by_hand():
    # min_count == buffer_size, so the boundary len(buffer) == min_count (which uses the buffer) is exercised.
    tracker = PerPromptStatTracker(buffer_size=4, min_count=4)

    # Epoch 1: buffers a=[1, 3], b=[5] are both below min_count -> batch stats: mean 3, std sqrt(8/3).
    adv = tracker.update(["a", "a", "b"], [1.0, 3.0, 5.0])
    s = math.sqrt(8 / 3)
    np.testing.assert_allclose(adv, [-2 / (s + EPS), 0.0, 2 / (s + EPS)], rtol=1e-12)

    # Epoch 2: a=[1, 3, 5, 7] reaches min_count (4) -> its buffer: mean 4, std sqrt((9+1+1+9)/4) = sqrt(5).
    #          b=[5, 1] still short -> this batch [5, 7, 1]: mean 13/3, std sqrt(56)/3.
    adv = tracker.update(["a", "b", "a"], [5.0, 1.0, 7.0])
    expected_b = (1 - 13 / 3) / (math.sqrt(56) / 3 + EPS)
    np.testing.assert_allclose(adv, [1 / (math.sqrt(5) + EPS), expected_b, 3 / (math.sqrt(5) + EPS)], rtol=1e-12)

    # Epoch 3: a's buffer is full, 1 is evicted -> a=[3, 5, 7, 9]: mean 6, std sqrt(5).
    adv = tracker.update(["a"], [9.0])
    np.testing.assert_allclose(adv, [3 / (math.sqrt(5) + EPS)], rtol=1e-12)

    assert tracker.state_dict() == {"a": [3.0, 5.0, 7.0, 9.0], "b": [5.0, 1.0]}


def test_single_batch_fallback_uses_all_rewards_of_the_batch():
    # Each prompt alone has zero spread; the batch fallback must use the spread across prompts.
    adv = PerPromptStatTracker(buffer_size=8, min_count=4).update(["x", "x", "y", "y"], [0.0, 0.0, 2.0, 2.0])
    np.testing.assert_allclose(adv, [-1 / (1 + EPS)] * 2 + [1 / (1 + EPS)] * 2)


def test_min_count_must_be_reachable():
    with pytest.raises(ValueError):
        PerPromptStatTracker(buffer_size=4, min_count=5)


def test_global_advantages_by_hand():
    adv = global_advantages([1.0, 2.0, 3.0])  # mean 2, std sqrt(2/3)
    s = math.sqrt(2 / 3)
    np.testing.assert_allclose(adv, [-1 / (s + EPS), 0.0, 1 / (s + EPS)], rtol=1e-12)
