"""The clipped surrogate loss against values worked out by hand, and the timestep selection."""

from __future__ import annotations

import math

import pytest
import torch

from ddpo_study.ppo import StepController, clipped_surrogate_loss, select_timesteps


def test_loss_and_stats_equal_hand_computation():
    # ratio r = exp(log_prob - old) = [1, 1.5, 0.5, 1]; eps = 0.2 so clamp(r) = [1, 1.2, 0.8, 1].
    log_prob = torch.tensor([0.0, math.log(1.5), math.log(0.5), 0.0], requires_grad=True)
    old = torch.zeros(4)
    # A = [1, 2, -1, 10] -> clamped to +-5: [1, 2, -1, 5].
    advantages = torch.tensor([1.0, 2.0, -1.0, 10.0])
    loss, stats = clipped_surrogate_loss(log_prob, old, advantages, clip_range=0.2, adv_clip_max=5.0)
    # -A*r       = [-1, -3.0, 0.5, -5]
    # -A*clamp(r) = [-1, -2.4, 0.8, -5]
    # max        = [-1, -2.4, 0.8, -5]  -> mean = -7.6 / 4 = -1.9
    assert loss.item() == pytest.approx(-1.9, abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2) / 4, rel=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)  # |r - 1| > 0.2 for 1.5 and 0.5
    assert set(stats) == {"approx_kl", "clipfrac"}  # every stat it returns is logged (train_approx_kl, ...)

    # Gradient wrt log_prob of the chosen term / 4: d(-A r)/dlogp = -A r; clipped terms give 0.
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-0.25, 0.0, 0.0, -1.25]))


def test_clipping_is_pessimistic_for_both_signs():
    """Clipping only removes the incentive to move further in the advantageous direction."""
    r = torch.tensor([0.5, 1.5, 0.5, 1.5])
    log_prob = torch.log(r).requires_grad_(True)
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, stats = clipped_surrogate_loss(log_prob, torch.zeros(4), advantages, clip_range=0.2)
    # A>0, r=0.5: max(-0.5, -0.8) = -0.5 (unclipped, keeps gradient: pushes r back up)
    # A>0, r=1.5: max(-1.5, -1.2) = -1.2 (clipped, no gradient: already improved enough)
    # A<0, r=0.5: max( 0.5,  0.8) =  0.8 (clipped, no gradient)
    # A<0, r=1.5: max( 1.5,  1.2) =  1.5 (unclipped, keeps gradient)
    assert loss.item() == pytest.approx((-0.5 - 1.2 + 0.8 + 1.5) / 4, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(log_prob.grad, torch.tensor([-0.5, 0.0, 0.0, 1.5]) / 4)
    assert stats["clipfrac"].item() == 1.0


def test_ratio_one_gives_minus_mean_advantage_and_zero_kl():
    advantages = torch.tensor([[0.5], [-2.0]])
    log_prob = torch.full((2, 3), -1.3)
    loss, stats = clipped_surrogate_loss(log_prob, log_prob.clone(), advantages.squeeze(1))  # (B,) broadcast to (B, K)
    assert loss.item() == pytest.approx(0.75)  # -mean([0.5]*3 + [-2]*3)
    assert stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0


def test_select_timesteps():
    g = torch.Generator().manual_seed(0)
    idx = select_timesteps(20, 0.5, 6, g)
    assert idx.shape == (6, 10) and idx.dtype == torch.long
    assert idx.min() >= 0 and idx.max() < 20
    assert all(row.unique().numel() == 10 for row in idx)  # distinct steps within a sample
    assert len({tuple(row.tolist()) for row in idx}) > 1  # independent per sample
    assert torch.equal(idx, select_timesteps(20, 0.5, 6, torch.Generator().manual_seed(0)))  # seeded
    full = select_timesteps(5, 1.0, 2, g)
    assert all(sorted(row.tolist()) == list(range(5)) for row in full)
    with pytest.raises(ValueError):
        select_timesteps(20, 0.01, 2, g)  # int(0.2) = 0 steps


def test_step_controller_factor_is_the_damped_square_root_rule_with_a_cap():
    c = StepController(target_kl=1e-2, gain=0.5, max_factor=2.0)
    assert c.factor(1e-2) == 1.0
    assert math.isclose(c.factor(1e-1), 10 ** -0.25)  # 10x too big a step: lr x 10^(-1/4)
    assert math.isclose(c.factor(1e-3), 10 ** 0.25)
    assert c.factor(1e-9) == 2.0 and c.factor(10.0) == 0.5 and c.factor(0.0) == 2.0  # capped; no move: grow
    assert math.isclose(StepController(1e-2, gain=1.0).factor(4e-2), 0.5)  # gain 1: the full sqrt correction

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert math.isclose(c.update(opt, 1e-1), 0.1 * 10 ** -0.25) and math.isclose(opt.param_groups[0]["lr"],
                                                                                    0.1 * 10 ** -0.25)
    for bad in (dict(target_kl=0), dict(target_kl=1e-2, gain=0), dict(target_kl=1e-2, max_factor=1)):
        with pytest.raises(ValueError):
            StepController(**bad)
