"""The geometric judge reads renders back (it is the referee, so it must be near perfect on them)."""

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
