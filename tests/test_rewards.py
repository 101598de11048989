"""Rewards against hand computation: JPEG sizes, the diversity penalty's partners, NaN checks, the registry."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from ddpo_study.aesthetic import AestheticMLP
from ddpo_study.images import to_uint8
from ddpo_study.rewards import (
    REWARDS,
    DiversityPenalty,
    RewardContext,
    RewardError,
    check_finite,
    jpeg_sizes_kb,
    make_reward,
)
from ddpo_study.toy import world

PROMPTS = [
    "a small red circle in the center on a black background",
    "a large blue square on the left on a white background",
    "a small green triangle at the top on a yellow background",
    "a large yellow circle in the bottom right on a purple background",
]


pytestmark = pytest.mark.usefixtures("module_one_thread")  # `clip` comes from tests/conftest.py


def renders(prompts, seed=0):
    return world.render_prompts(prompts, generator=torch.Generator().manual_seed(seed))


def constant_images(values, size=8):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


# ----------------------------------------------------------------------------------------- JPEG
def test_jpeg_sizes_match_direct_pil_encoding():
    images = renders(PROMPTS)
    expected = []
    for arr in to_uint8(images):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        expected.append(len(buf.getvalue()) / 1000)
    np.testing.assert_allclose(jpeg_sizes_kb(images).numpy(), expected, rtol=1e-6)

    comp, info = make_reward("jpeg_compressibility")(images, PROMPTS)
    incomp, _ = make_reward("jpeg_incompressibility")(images, PROMPTS)
    assert comp.dtype == torch.float32 and comp.shape == (4,)
    np.testing.assert_allclose(comp.numpy(), -np.array(expected), rtol=1e-6)
    np.testing.assert_allclose(incomp.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(info["jpeg_kb"], expected, rtol=1e-6)


def test_flat_image_is_more_compressible_than_noise():
    flat = torch.full((1, 3, 64, 64), 0.5)
    noisy = torch.rand((1, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    reward = make_reward("jpeg_compressibility")
    r_flat, _ = reward(flat, ["x"])
    r_noisy, _ = reward(noisy, ["x"])
    assert r_flat.item() > r_noisy.item()


# ----------------------------------------------------------------------------------------- CLIP rewards
def test_aesthetic_and_alignment_by_hand(clip):
    images = renders(PROMPTS)
    torch.manual_seed(1)
    mlp = AestheticMLP(16, hidden=(8,)).eval()
    ctx = RewardContext(clip=clip, aesthetic=mlp)

    r, _ = make_reward("aesthetic", ctx)(images, PROMPTS)
    embeds = clip.image_embeds(images)
    with torch.no_grad():
        expected = mlp.layers(embeds / embeds.norm(dim=-1, keepdim=True)).squeeze(-1)
    torch.testing.assert_close(r, expected)

    r, _ = make_reward("clip_alignment", ctx)(images, PROMPTS)
    text = clip.text_embeds(PROMPTS)
    expected = torch.nn.functional.cosine_similarity(embeds, text, dim=-1)
    torch.testing.assert_close(r, expected, atol=1e-6, rtol=1e-5)
    # The prompt cache must not mix prompts up on a second, reordered call.
    r2, _ = make_reward("clip_alignment", ctx)(images.flip(0), PROMPTS[::-1])
    torch.testing.assert_close(r2, expected.flip(0), atol=1e-6, rtol=1e-5)


def test_clip_rewards_need_their_models(clip):
    with pytest.raises(RewardError, match="aesthetic"):
        make_reward("aesthetic", RewardContext(clip=clip))
    with pytest.raises(RewardError, match="clip"):
        make_reward("aesthetic", RewardContext(aesthetic=AestheticMLP(16, hidden=(8,))))
    with pytest.raises(RewardError, match="clip_alignment.*clip"):
        make_reward("clip_alignment", RewardContext())
    with pytest.raises(RewardError, match="lpips"):
        make_reward("jpeg_compressibility", RewardContext(), diversity_lambda=1.0, diversity_feature="lpips")


# ----------------------------------------------------------------------------------------- diversity penalty
def test_identical_images_with_different_prompts_have_similarity_one(clip):
    same = renders(PROMPTS[:1]).expand(4, -1, -1, -1).clone()
    distinct = renders(PROMPTS, seed=3)
    ctx = RewardContext(clip=clip)
    for feature in ("clip", "pixel"):
        reward = make_reward("jpeg_compressibility", ctx, diversity_lambda=2.0, diversity_feature=feature)
        r, info = reward(same, PROMPTS)
        np.testing.assert_allclose(info["similarity"], 1.0, atol=1e-5)
        np.testing.assert_allclose(r.numpy(), info["base_reward"] - 2.0, atol=1e-5)
        _, info_distinct = reward(distinct, PROMPTS)
        assert (info_distinct["similarity"] < 1 - 1e-3).all(), feature


def test_partners_by_hand_with_pixel_feature():
    # Constant images: the pixel RMS distance of a and b is |a - b|, so similarity = 1 - |a - b|.
    images = constant_images([0.0, 0.2, 0.5, 0.6])
    prompts = ["a", "a", "b", "a"]
    zero = lambda images, prompts: (torch.zeros(len(prompts)), {})  # noqa: E731

    within = DiversityPenalty(zero, 1.0, form="within_prompt", feature="pixel")
    # 0: partners 1, 3 -> (0.8 + 0.4) / 2; 1: 0, 3 -> (0.8 + 0.6) / 2; 2: none -> 0; 3: 0, 1 -> (0.4 + 0.6) / 2
    expected = [0.6, 0.7, 0.0, 0.5]
    np.testing.assert_allclose(within.similarity(images, prompts).numpy(), expected, atol=1e-6)
    r, info = within(images, prompts)
    np.testing.assert_allclose(r.numpy(), -np.array(expected), atol=1e-6)
    np.testing.assert_allclose(info["base_reward"], 0.0)

    cross = DiversityPenalty(zero, 0.5, form="cross_prompt", feature="pixel")
    # only image 2 has prompt b: 0 <-> 2: 0.5, 1 <-> 2: 0.7, 3 <-> 2: 0.9; image 2 averages all three
    expected = [0.5, 0.7, 0.7, 0.9]
    np.testing.assert_allclose(cross.similarity(images, prompts).numpy(), expected, atol=1e-6)
    # One prompt for the whole batch: no cross-prompt partner anywhere -> similarity 0, no penalty.
    np.testing.assert_allclose(cross.similarity(images, ["a"] * 4).numpy(), 0.0)


@pytest.mark.filterwarnings("ignore:.*deprecated since 0.13:UserWarning")  # lpips calls tv.alexnet(pretrained=)
def test_lpips_feature_with_random_backbone():
    lpips = pytest.importorskip("lpips")
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    ctx = RewardContext(lpips=model)
    reward = make_reward("jpeg_compressibility", ctx, diversity_lambda=1.0, diversity_feature="lpips")
    same = renders(PROMPTS[:1]).expand(3, -1, -1, -1).clone()
    _, info = reward(same, PROMPTS[:3])
    np.testing.assert_allclose(info["similarity"], 1.0, atol=1e-5)
    _, info = reward(renders(PROMPTS[:3], seed=5), PROMPTS[:3])
    assert np.isfinite(info["similarity"]).all() and (info["similarity"] < 1).all()


def test_bad_penalty_arguments():
    zero = lambda images, prompts: (torch.zeros(len(prompts)), {})  # noqa: E731
    with pytest.raises(ValueError, match="form"):
        DiversityPenalty(zero, 1.0, form="sideways", feature="pixel")
    with pytest.raises(ValueError, match="feature"):
        DiversityPenalty(zero, 1.0, feature="sift")
    with pytest.raises(ValueError, match="lambda"):
        make_reward("jpeg_compressibility", diversity_lambda=-1.0)
    with pytest.raises(ValueError, match="lambda"):
        make_reward("jpeg_compressibility", diversity_lambda=float("nan"))


# ----------------------------------------------------------------------------------------- checks, registry
def test_nan_reward_raises_naming_reward_and_batch(monkeypatch):
    def factory(ctx):
        return lambda images, prompts: (torch.tensor([1.0, float("nan"), float("inf"), float("nan")]), {})

    monkeypatch.setitem(REWARDS, "broken", factory)
    reward = make_reward("broken")
    with pytest.raises(RewardError, match=r"'broken'.*2 NaN and 1 inf.*batch 7"):
        reward(constant_images([0.1] * 4), list("abcd"), batch_index=7)
    fine = torch.ones(3)
    assert check_finite(fine, "fine", 0) is fine  # finite rewards pass through, not copied
    with pytest.raises(RewardError, match=r"'direct' returned 0 NaN and 1 inf.*index not given.*indices \[1\]"):
        check_finite(torch.tensor([0.0, float("inf")]), "direct")


def test_unknown_reward_lists_known_names():
    with pytest.raises(ValueError, match="unknown reward 'beauty'.*aesthetic.*jpeg_compressibility"):
        make_reward("beauty")


def test_input_validation():
    reward = make_reward("jpeg_compressibility")
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        reward(constant_images([0.1, 0.2, 0.3]), ["a", "b"])
    with pytest.raises(ValueError, match="expects images"):
        reward(torch.zeros(3, 8, 8), ["a", "b", "c"])
