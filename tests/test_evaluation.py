"""The eval protocol: fixed seeds and the judge's metrics (its saved files: tests/test_rundir.py)."""

import torch

from ddpo_study.config import EVAL_SEED_BASE
from ddpo_study.evaluation import eval_seeds, judge_metrics
from ddpo_study.toy import world


def test_eval_seeds_are_the_same_fixed_block_in_every_run():
    assert eval_seeds(3) == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2]


def test_judge_metrics_score_toy_prompts_and_skip_others():
    prompts = ["a large red square in the center on a blue background",
               "a small white circle on the left on a black background"]
    g = torch.Generator().manual_seed(0)
    images = torch.stack([world.render_prompts(prompts, 32, g) for _ in range(3)], dim=1)  # (P, S, 3, H, W)
    metrics = judge_metrics(images, prompts)
    assert metrics["judge_all"] == 1.0
    swapped = judge_metrics(images.flip(0), prompts)
    assert swapped["judge_color"] == 0.0
    assert metrics["judge_distinct"] == 2.0 and metrics["judge_distinct_frac"] == 1.0
    same = judge_metrics(images[:1].expand(2, -1, -1, -1, -1), prompts)  # one image for both prompts
    assert same["judge_distinct"] == 1.0
    assert judge_metrics(images, ["a red circle", "a blue square"]) == {}
