"""Eval metrics against hand computation: pairwise diversities, retrieval, Vendi, distance from base, LPIPS."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch

from ddpo_study.images import to_uint8
from ddpo_study.metrics import (
    ALEXNET_CHECKPOINT,
    LpipsUnavailable,
    as_image_grid,
    clip_score,
    compute_eval_metrics,
    cosine_distance,
    cross_prompt_diversity,
    distance_from_base,
    grid_embeds,
    load_lpips,
    maybe_load_lpips,
    prompt_retrieval_accuracy,
    rms_distance,
    vendi_score,
    within_prompt_diversity,
)
from ddpo_study.rewards import make_reward
from ddpo_study.toy import world

PROMPTS = [
    "a small red circle in the center on a black background",
    "a large blue square on the left on a white background",
    "a small green triangle at the top on a yellow background",
]
ALEX_WARNING = "ignore:.*deprecated since 0.13:UserWarning"  # lpips calls torchvision's alexnet(pretrained=...)


pytestmark = pytest.mark.usefixtures("module_one_thread")  # `clip` comes from tests/conftest.py


@pytest.fixture(scope="module")
def random_lpips(module_one_thread):
    lpips = pytest.importorskip("lpips")
    with warnings.catch_warnings():  # torchvision's deprecation warnings about lpips' `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()


def grid(seeds: int = 4, prompts=PROMPTS) -> torch.Tensor:
    """(P, S, 3, 32, 32): renders of each prompt with a different generator seed per column."""
    cols = [world.render_prompts(prompts, generator=torch.Generator().manual_seed(s)) for s in range(seeds)]
    return torch.stack(cols, dim=1)


def collapsed_grid(seeds: int = 4) -> torch.Tensor:
    """Every prompt gets the same image for a given seed (the trl#2113 symptom)."""
    g = grid(seeds, PROMPTS[:1])
    return g.expand(len(PROMPTS), -1, -1, -1, -1).clone()


# ----------------------------------------------------------------------------------------- diversities
def test_pairwise_distances_by_hand_on_2x2():
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],    # prompt 0: seeds orthogonal -> 1 - 0 = 1
                          [[1.0, 0.0], [-1.0, 0.0]]])  # prompt 1: seeds opposite   -> 1 + 1 = 2
    assert within_prompt_diversity(feats) == pytest.approx((1 + 2) / 2)
    # seed 0: [1,0] vs [1,0] -> 0; seed 1: [0,1] vs [-1,0] -> 1
    assert cross_prompt_diversity(feats) == pytest.approx((0 + 1) / 2)

    # Constant images: pixel RMS distance = |a - b| * 255.
    vals = torch.tensor([[0.0, 0.2], [0.1, 0.5]]).view(2, 2, 1, 1, 1).expand(2, 2, 3, 4, 4)
    pixel = lambda a, b: rms_distance(a, b, scale=255.0)  # noqa: E731
    assert within_prompt_diversity(vals, pixel) == pytest.approx((0.2 + 0.4) / 2 * 255, rel=1e-5)
    assert cross_prompt_diversity(vals, pixel) == pytest.approx((0.1 + 0.3) / 2 * 255, rel=1e-5)
    assert math.isnan(within_prompt_diversity(feats[:, :1]))  # one seed: no pairs, undefined


def test_distance_primitives():
    a = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    b = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    torch.testing.assert_close(cosine_distance(a, b), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(rms_distance(a, b), torch.tensor([math.sqrt((9 + 16) / 2), math.sqrt(5 / 2)]))


# ----------------------------------------------------------------------------------------- alignment, Vendi
def test_retrieval_and_clip_score_on_constructed_embeddings():
    p, s = 4, 3
    text = torch.eye(p, 8)
    own = text[:, None].expand(p, s, 8).clone()
    assert prompt_retrieval_accuracy(own, text) == 1.0
    assert clip_score(own, text) == pytest.approx(1.0)
    shuffled = own.roll(1, dims=0)  # images of prompt p look like prompt p - 1
    assert prompt_retrieval_accuracy(shuffled, text) == 0.0
    assert clip_score(shuffled, text) == pytest.approx(0.0)
    half = own.clone()
    half[:2] = shuffled[:2]
    assert prompt_retrieval_accuracy(half, text) == 0.5
    # cos([1,1]/sqrt2, [1,0]) = 1/sqrt2 for every image
    assert clip_score(torch.ones(1, 2, 2), torch.tensor([[1.0, 0.0]])) == pytest.approx(1 / math.sqrt(2))


def test_vendi_score_by_hand():
    assert vendi_score(torch.eye(5)) == pytest.approx(5.0)
    assert vendi_score(torch.ones(6, 3)) == pytest.approx(1.0)
    e = torch.eye(2)
    # two groups of two identical items: K/N has eigenvalues 1/2, 1/2 -> exp(log 2) = 2
    assert vendi_score(torch.stack([e[0], e[0], e[1], e[1]])) == pytest.approx(2.0)


# ----------------------------------------------------------------------------------------- whole eval
def test_collapsed_grid_has_zero_cross_prompt_diversity(clip):
    m = compute_eval_metrics(collapsed_grid(), PROMPTS, clip)
    assert m["cross_div_clip"] == pytest.approx(0.0, abs=1e-6)
    assert m["cross_div_pixel"] == pytest.approx(0.0, abs=1e-6)
    assert m["within_div_clip"] > 0 and m["within_div_pixel"] > 0  # seeds still differ
    assert m["retrieval_acc"] == pytest.approx(1 / 3)  # every image picks the same prompt
    assert m["retrieval_chance"] == pytest.approx(1 / 3)

    fully = collapsed_grid()[:, :1].expand(-1, 4, -1, -1, -1).clone()  # one image everywhere
    m = compute_eval_metrics(fully, PROMPTS, clip)
    assert m["vendi_clip"] == pytest.approx(1.0, abs=1e-4)
    assert m["within_div_clip"] == pytest.approx(0.0, abs=1e-6)


def test_distinct_grid_metrics_and_keys(clip):
    images = grid()
    reward = make_reward("jpeg_compressibility")
    m = compute_eval_metrics(images, PROMPTS, clip, base_images=images, reward_fn=reward, batch_size=5)
    assert {"reward_mean", "reward_std", "within_div_clip", "within_div_pixel", "cross_div_clip",
            "cross_div_pixel", "retrieval_acc", "clip_score", "vendi_clip", "dist_base_pixel",
            "dist_base_clip"} <= set(m)
    assert all(isinstance(v, float) for v in m.values())
    assert m["cross_div_clip"] > 0 and m["cross_div_pixel"] > 0 and 1 < m["vendi_clip"] <= 12
    assert m["dist_base_pixel"] == 0.0 and m["dist_base_clip"] == pytest.approx(0.0, abs=1e-6)
    direct = reward(images.flatten(0, 1), [p for p in PROMPTS for _ in range(4)])[0].double()
    assert m["reward_mean"] == pytest.approx(float(direct.mean()))
    assert m["reward_std"] == pytest.approx(float(direct.std(unbiased=False)))
    # The same metrics from the saved .npz layout (P, S, H, W, 3) uint8.
    u8 = to_uint8(images)
    torch.testing.assert_close(as_image_grid(u8), images, atol=1 / 255, rtol=0)
    with pytest.raises(ValueError, match="2 prompts"):
        compute_eval_metrics(images, PROMPTS[:2], clip)


def test_distance_from_base_by_hand(clip):
    base = torch.full((2, 2, 3, 32, 32), 0.3)
    moved = base + 0.1
    d = distance_from_base(moved, base, clip)
    assert d["pixel"] == pytest.approx(25.5, rel=1e-5)
    # Every image of a grid is the same constant image: the distance is 1 - cos of one pair of embeddings.
    a, b = clip.image_embeds(moved[0, :1]).double(), clip.image_embeds(base[0, :1]).double()
    expected = 1 - float(torch.nn.functional.cosine_similarity(a, b)[0])
    assert expected > 1e-4 and d["clip"] == pytest.approx(expected, rel=1e-4)
    assert distance_from_base(base, base)["pixel"] == 0.0 and "clip" not in distance_from_base(base, base)


def test_precomputed_base_embeds_replace_embedding_the_base_images(clip):
    images, other = grid(3), grid(3).flip(0)  # `other`: the same renders, prompts in reverse order
    base_embeds = grid_embeds(other, clip, batch_size=4)
    assert base_embeds.shape == (3, 3, 16) and base_embeds.dtype == torch.float32
    direct = clip.image_embeds(other.flatten(0, 1)).float()
    torch.testing.assert_close(base_embeds.flatten(0, 1), direct, atol=1e-5, rtol=1e-5)
    # Same base both ways: the same metrics as embedding base_images inside.
    inside = compute_eval_metrics(images, PROMPTS, clip, base_images=other, batch_size=4)
    given = compute_eval_metrics(images, PROMPTS, clip, base_images=other, batch_size=4, base_embeds=base_embeds)
    assert given == inside
    # The embeddings are used instead of base_images' own: here they disagree, and the CLIP distance follows them.
    m = compute_eval_metrics(images, PROMPTS, clip, base_images=images, base_embeds=base_embeds)
    expected = 1 - torch.nn.functional.cosine_similarity(clip.image_embeds(images.flatten(0, 1)).double(),
                                                         direct.double()).mean()
    assert m["dist_base_pixel"] == 0.0 and float(expected) > 0.01
    assert m["dist_base_clip"] == pytest.approx(float(expected), rel=1e-4)
    with pytest.raises(ValueError, match="base_embeds"):
        compute_eval_metrics(images, PROMPTS, clip, base_images=images, base_embeds=base_embeds[:2])


# ----------------------------------------------------------------------------------------- LPIPS
def test_lpips_metrics_with_random_backbone(clip, random_lpips):
    m = compute_eval_metrics(collapsed_grid(3), PROMPTS, clip, lpips=random_lpips)
    assert m["cross_div_lpips"] == pytest.approx(0.0, abs=1e-6)
    assert m["within_div_lpips"] > 0
    m = compute_eval_metrics(grid(2), PROMPTS, clip, lpips=random_lpips)
    assert m["cross_div_lpips"] > 0 and math.isfinite(m["within_div_lpips"])


def test_load_lpips_fails_fast_without_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(LpipsUnavailable, match=ALEXNET_CHECKPOINT):
        load_lpips()
    model, warning = maybe_load_lpips()
    assert time.monotonic() - start < 5
    assert model is None and "LPIPS unavailable" in warning and "TORCH_HOME" in warning


@pytest.mark.filterwarnings(ALEX_WARNING)
def test_load_lpips_uses_a_cached_checkpoint(clip, monkeypatch, tmp_path):
    # A stand-in checkpoint (random AlexNet weights) in the hub cache: found offline, no download attempted.
    import torchvision

    ckpt = tmp_path / "hub" / "checkpoints" / ALEXNET_CHECKPOINT
    ckpt.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model, warning = maybe_load_lpips()
    assert warning is None and not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = compute_eval_metrics(x[:, None].expand(2, 2, -1, -1, -1), PROMPTS[:2], clip, lpips=model)
    assert np.isfinite(m["cross_div_lpips"]) and m["within_div_lpips"] == pytest.approx(0.0, abs=1e-6)

    ckpt.write_bytes(b"not a checkpoint")  # a corrupt file is reported, not raised as a pickle error
    with pytest.raises(LpipsUnavailable, match="could not build LPIPS"):
        load_lpips()
