"""The base-model evaluation (``ddpo_study.toy.evaluate``): pairwise RMS by hand, per-image seeding of the stock
pipeline call, and the report on fake pipelines whose answers are known."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from ddpo_study.toy import evaluate, world
from ddpo_study.toy.judge import attribute_accuracy

PROMPTS = [
    "a small red circle in the center on a black background",
    "a large blue square on the left on a white background",
    "a large yellow triangle at the top on a purple background",
]


def test_mean_pairwise_rms_by_hand():
    levels = torch.tensor([[0.0, 0.1, 0.3], [0.5, 0.5, 0.5]])  # prompt 0: three different grey levels
    images = levels[:, :, None, None, None].expand(2, 3, 3, 4, 4)
    # prompt 0: pairs differ by 0.1, 0.3, 0.2 -> RMS 25.5, 76.5, 51 (0-255 units), mean 51; prompt 1: 0
    torch.testing.assert_close(evaluate.mean_pairwise_rms(images), torch.tensor([51.0, 0.0]), rtol=1e-5, atol=1e-4)

    rand = torch.rand(1, 4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    pairs = [((rand[0, i] - rand[0, j]).pow(2).mean().sqrt() * 255) for i, j in itertools.combinations(range(4), 2)]
    assert float(evaluate.mean_pairwise_rms(rand)[0]) == pytest.approx(float(torch.stack(pairs).mean()), rel=1e-5)


def test_sample_pipe_seeds_each_image_by_its_seed_alone(tiny_pipe):
    prompts, seeds = ["a red circle", "a blue square"], [3, 5]
    images = evaluate.sample_pipe(tiny_pipe, prompts, seeds, guidance=2.0, steps=2)
    assert images.shape == (2, 2, 3, 16, 16)
    one_by_one = evaluate.sample_pipe(tiny_pipe, prompts, seeds, guidance=2.0, steps=2, batch=1)
    torch.testing.assert_close(images, one_by_one, atol=1e-5, rtol=0)
    direct = tiny_pipe(["a blue square"], num_inference_steps=2, guidance_scale=2.0, eta=1.0,
                       generator=[torch.Generator().manual_seed(5)], output_type="pt").images[0]
    torch.testing.assert_close(images[1, 1], direct.float(), atol=1e-5, rtol=0)
    assert not torch.allclose(images[1, 0], images[1, 1])  # other seed, other image


class FakePipe:
    """Answers the stock pipeline call with renders of the world: a model that follows every prompt.

    ``seeded=False``: the generators are ignored, so every seed of a prompt gives the same image."""

    def __init__(self, seeded: bool = True):
        self.seeded, self.calls = seeded, []

    def __call__(self, prompts, num_inference_steps, guidance_scale, eta, generator, output_type, return_dict):
        self.calls.append((len(prompts), num_inference_steps, guidance_scale, eta, output_type))
        images = [world.render_prompts([p], generator=g if self.seeded else torch.Generator().manual_seed(0),
                                       noise=self.seeded)[0] for p, g in zip(prompts, generator)]
        return SimpleNamespace(images=torch.stack(images))


def test_evaluate_reports_judge_and_diversity_of_what_the_pipe_returns():
    pipe = FakePipe()
    report = evaluate.evaluate(pipe, PROMPTS, [1.5, 3.0], n_seeds=2, steps=7)
    assert pipe.calls == [(6, 7, 1.5, 1.0, "pt"), (6, 7, 3.0, 1.0, "pt")]
    assert (report["n_prompts"], report["n_seeds"], report["steps"]) == (3, 2, 7)
    assert set(report["by_guidance"]) == {"1.5", "3.0"}

    # What the fake pipe drew, rebuilt here: image (p, s) is a render seeded by the eval seed 1000 + s.
    expected = torch.stack([torch.stack([world.render_prompts([p], generator=torch.Generator().manual_seed(1000 + s))[0]
                                         for s in range(2)]) for p in PROMPTS])
    acc = attribute_accuracy(expected.flatten(0, 1), world.parse_many(PROMPTS).repeat_interleave(2))
    rms = float(torch.stack([(expected[p, 0] - expected[p, 1]).pow(2).mean().sqrt() * 255 for p in range(3)]).mean())
    row = report["by_guidance"]["3.0"]
    assert row["judge_accuracy"] == pytest.approx(acc)
    assert row["within_prompt_rms"] == pytest.approx(rms, rel=1e-5) and rms > 1
    assert row["diversity_ratio"] == pytest.approx(rms / report["render_within_prompt_rms"], rel=1e-6)
    assert row["meets_thresholds"] == all(acc[k] >= v for k, v in evaluate.THRESHOLDS.items())
    assert report["judge_on_renders"]["bg"] == 1.0  # the judge reads plain backgrounds of true renders


def test_evaluate_scores_a_seed_collapsed_pipe_as_without_diversity():
    report = evaluate.evaluate(FakePipe(seeded=False), PROMPTS, [2.0], n_seeds=3, steps=2)
    row = report["by_guidance"]["2.0"]
    assert row["within_prompt_rms"] == 0.0 and row["diversity_ratio"] == 0.0
    assert report["render_within_prompt_rms"] > 1
