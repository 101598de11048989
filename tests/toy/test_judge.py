"""The geometric judge reads renders back (it is the referee, so it must be near perfect on them)."""

import pytest
import torch

from ddpo_study.toy import world
from ddpo_study.toy.judge import attribute_accuracy, judge
from ddpo_study.toy.taste import TASTE_RANGE, taste


def test_judge_reads_fresh_renders_almost_perfectly():
    g = torch.Generator().manual_seed(0)
    attrs = world.random_attributes(600, g)
    acc = attribute_accuracy(world.render(attrs, 32, g), attrs)
    assert acc["bg"] == 1.0 and acc["color"] == 1.0 and acc["position"] == 1.0
    assert acc["size"] >= 0.99 and acc["shape"] >= 0.97, acc


def test_judge_is_not_fooled_by_wrong_attributes():
    g = torch.Generator().manual_seed(0)
    attrs = world.random_attributes(200, g)
    images = world.render(attrs, 32, g)
    shuffled = attrs[torch.randperm(200, generator=g)]
    acc = attribute_accuracy(images, shuffled)
    assert acc["all"] < 0.05 and acc["position"] < 0.3


def test_judge_reports_no_shape_on_blank_images():
    blank = torch.full((3, 3, 32, 32), 0.5)
    assert not judge(blank).found.any()
    assert attribute_accuracy(blank, world.random_attributes(3))["all"] == 0.0


def test_taste_prefers_its_documented_optimum_and_ignores_the_prompt():
    best = world.parse_many(["a large orange circle in the center on a blue background"])
    worst = world.parse_many(["a small black triangle in the top left on a yellow background"])
    g = torch.Generator().manual_seed(0)
    hi = taste(best, world.sample_layout(best, g))
    lo = taste(worst, world.sample_layout(worst, g))
    assert TASTE_RANGE[0] <= lo < hi <= TASTE_RANGE[1]
    assert hi > 8.5 and lo < 3.0


def test_distinct_readings_count_what_the_judge_tells_apart_across_prompts_at_one_seed():
    from ddpo_study.toy.judge import distinct_readings

    g = torch.Generator().manual_seed(1)
    attrs = world.all_attribute_combinations()[torch.randperm(2646, generator=g)[:12]]  # 12 distinct prompts
    images = torch.stack([world.render(attrs, 32, g) for _ in range(3)], dim=1)  # (P, S, 3, H, W)
    got = distinct_readings(images, attrs)
    assert got["distinct"] >= 11.5 and got["distinct_frac"] >= 11.5 / 12
    same = images[:1].expand(12, -1, -1, -1, -1)  # every prompt gives the same image (per seed)
    assert distinct_readings(same, attrs) == {"distinct": 1.0, "distinct_frac": 1 / 12}
    twice = attrs[torch.arange(12) % 6]  # 6 distinct true tuples, each twice: the fraction is of those 6
    assert distinct_readings(world.render(twice, 32, g)[:, None], twice)["distinct_frac"] == pytest.approx(1.0, abs=0.2)
    blank = torch.full((4, 2, 3, 32, 32), 0.5)  # no shape anywhere: one reading, "no shape"
    assert distinct_readings(blank, attrs[:4])["distinct"] == 1.0
    with pytest.raises(ValueError, match="prompts, seeds"):
        distinct_readings(images[:, 0], attrs)
