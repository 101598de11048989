"""Statistics against hand computations: intervals over seeds, the clustered SE, paired-by-seed CIs, Holm."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ddpo_study import report


def test_mean_and_welch_intervals():
    m, lo, hi, n = report.mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and hi - m == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(report.mean_ci([1.0])[1])
    diff, lo, hi = report.welch_ci([1, 2, 3], [4, 5, 6])  # se = sqrt(2/3), Welch df = 4, t = 2.776445
    assert diff == -3 and hi - diff == pytest.approx(2.776445 * math.sqrt(2 / 3), rel=1e-5)


def test_clustered_se_equals_the_cr1_formula_by_hand():
    # 3 prompts x 2 seeds; mean 3; cluster residual sums -2, -2, 4; SE^2 = 3/2 * 24 / 6^2 = 1
    x = np.array([[1.0, 3.0], [2.0, 2.0], [6.0, 4.0]])
    assert report.clustered_mean_se(x) == pytest.approx((3.0, 1.0, 3))
    # balanced clusters: the SE of the prompt means (2, 2, 5): sd sqrt(3) / sqrt(3)
    means = x.mean(axis=1)
    assert report.clustered_mean_se(x)[1] == pytest.approx(means.std(ddof=1) / math.sqrt(3))
    # unbalanced (a missing image): N = 5, mean 3.2, sums -2.2, -0.4, 2.6; SE^2 = 3/2 * 11.76 / 25
    y = np.array([[1.0, np.nan], [2.0, 4.0], [6.0, 3.0]])
    mean, se, g = report.clustered_mean_se(y)
    assert (mean, g) == (pytest.approx(3.2), 3) and se == pytest.approx(math.sqrt(1.5 * 11.76 / 25))
    assert math.isnan(report.clustered_mean_se([[1.0, 2.0]])[1])  # one cluster: no SE


def test_paired_gain_is_clustered_by_prompt_and_smaller_in_z_than_iid():
    after = np.array([[1.0, 3.0], [2.0, 2.0], [6.0, 4.0]])
    g = report.paired_gain(np.zeros_like(after), after)
    assert (g["gain"], g["gain_se"], g["z"], g["n_prompts"], g["n_images"]) == pytest.approx((3, 1, 3, 3, 6))
    assert g["gain_se_iid"] == pytest.approx(math.sqrt(16 / 5 / 6))
    # images of one prompt that move together: the iid z overstates the evidence
    rng = np.random.default_rng(0)
    shift = rng.normal(0.1, 1.0, size=(16, 1)) + 0.01 * rng.standard_normal((16, 4))
    g = report.paired_gain(np.zeros((16, 4)), shift)
    assert abs(g["z_iid"]) > 1.8 * abs(g["z"])  # ~ sqrt(4 seeds) larger
    with pytest.raises(ValueError, match="same shape"):
        report.paired_gain(np.zeros((2, 2)), np.zeros((2, 3)))


def test_paired_seed_ci_uses_only_common_seeds():
    a = pd.Series({0: 1.0, 1: 2.0, 2: 4.0, 5: 9.0})
    b = pd.Series({0: 0.5, 1: 1.0, 2: 2.5, 3: 7.0})
    res = report.paired_seed_ci(a, b)  # differences 0.5, 1.0, 1.5: mean 1, sd 0.5, se 0.5 / sqrt(3), df 2
    se = 0.5 / math.sqrt(3)
    t = 1.0 / se
    assert res["n"] == 3 and res["difference"] == pytest.approx(1.0)
    assert res["mean_a"] == pytest.approx(7 / 3) and res["mean_b"] == pytest.approx(4 / 3)
    assert res["high"] - 1.0 == pytest.approx(4.302653 * se, rel=1e-5)
    assert res["p"] == pytest.approx(1 - t / math.sqrt(t**2 + 2))  # two-sided t-test, df 2, in closed form
    one = report.paired_seed_ci(pd.Series({0: 1.0}), pd.Series({0: 0.0}))
    assert one["n"] == 1 and math.isnan(one["low"]) and math.isnan(one["p"])
    same = report.paired_seed_ci(pd.Series({0: 1.0, 1: 2.0}), pd.Series({0: 0.5, 1: 1.5}))
    assert (same["low"], same["high"], same["p"]) == (0.5, 0.5, 0.0)


def test_one_sided_gain_p():
    se = 1 / math.sqrt(3)  # gains 1, 2, 3: mean 2, sd 1, df 2
    t = 2 / se
    assert report.one_sided_gain_p([1.0, 2.0, 3.0]) == pytest.approx((1 - t / math.sqrt(t**2 + 2)) / 2)
    assert math.isnan(report.one_sided_gain_p([1.0]))


def test_holm_against_a_hand_computed_example():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone 0.06)
    got = report.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    assert got[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(got[4])
    assert report.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1, monotone
    assert report.holm([]) == [] and report.holm([0.2]) == [0.2]


def test_paired_seeds_needed_matches_the_standard_power_table():
    from ddpo_study.report.stats import paired_seeds_needed

    unit = np.array([-1.0, 1.0]) / np.std([-1.0, 1.0], ddof=1)  # sd 1
    # two-sided paired t at alpha 0.05, power 0.8 (G*Power): effect 1 sd -> 10 seeds, 0.5 sd -> 34
    assert paired_seeds_needed(unit + 1.0) == 10 and paired_seeds_needed(unit - 0.5) == 34
    assert paired_seeds_needed(unit + 1.0, alpha=0.01) > 10
    assert np.isnan(paired_seeds_needed([0.3])) and np.isnan(paired_seeds_needed(unit))


def test_ratio_ci_is_fiellers_interval():
    # By hand: means 20 / 10, v_a = 4/3, v_b = 0.25/3, t(2)^2 = 18.5128: the quadratic
    # 98.457 R^2 - 400 R + 375.316 = 0 has roots 1.4707 and 2.5920.
    ratio, low, high = report.stats.ratio_ci([20, 22, 18], [10, 10.5, 9.5])
    assert ratio == pytest.approx(2.0)
    assert (low, high) == pytest.approx((1.4707, 2.5920), abs=2e-4)
    # The bounds are where the ratio's t statistic equals the t quantile.
    t2 = report.stats.t_quantile(2) ** 2
    for r in (low, high):
        assert (20 - r * 10) ** 2 == pytest.approx(t2 * (4 / 3 + r * r * 0.25 / 3))


def test_ratio_ci_is_unbounded_when_the_denominator_may_be_zero():
    ratio, low, high = report.stats.ratio_ci([2, 4, 6], [1, 2, 3])
    assert ratio == pytest.approx(2.0) and low == -math.inf and high == math.inf
    assert all(math.isnan(v) for v in report.stats.ratio_ci([1.0], [])[0:1])


def test_paired_tost_against_a_hand_computed_example():
    # Differences 0.01, 0.03, -0.01, 0.05: mean 0.02, sd 0.02582, se 0.01291, df 3, t(0.95, 3) = 2.3534.
    a = pd.Series({0: 0.51, 1: 0.53, 2: 0.49, 3: 0.55})
    b = pd.Series({0: 0.50, 1: 0.50, 2: 0.50, 3: 0.50})
    res = report.stats.paired_tost(a, b, margin=0.1)
    assert (res["low"], res["high"]) == pytest.approx((0.02 - 2.3534 * 0.01291, 0.02 + 2.3534 * 0.01291), abs=1e-4)
    # the upper test binds: t = (0.02 - 0.1) / 0.01291 = -6.197, p = P(T_3 <= -6.197) = 0.00423
    assert res["p"] == pytest.approx(0.00423, abs=5e-5)
    # the same data cannot show equivalence within a margin the 90% interval crosses
    tight = report.stats.paired_tost(a, b, margin=0.04)
    assert res["high"] > 0.04 and tight["p"] > 0.05
