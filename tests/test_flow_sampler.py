"""The flow SDE step with its log-prob (Flow-GRPO's formulation), checked by an independent computation of the
density, against diffusers' Euler ODE step at noise level -> 0, and its closed-form KL; sampling and re-scoring on
a tiny SD3 pipeline built from config."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ddpo_study.flow_sampler import (
    FlowFamily,
    flow_gaussian_kl,
    flow_sde_step_with_logprob,
    recompute_flow_log_probs,
    sample_flow_trajectories,
)

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def scheduler(steps: int = 10, shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    s = FlowMatchEulerDiscreteScheduler(shift=shift)
    s.set_timesteps(steps)
    return s


def test_the_log_prob_is_the_gaussian_density_of_the_sde_step_averaged_over_dimensions():
    sched = scheduler()
    g = torch.Generator().manual_seed(0)
    x, v, prev = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    j = 4
    t = sched.timesteps[j]
    out, log_prob, mean, std_dev_t = flow_sde_step_with_logprob(sched, v, t, x, noise_level=0.7, prev_sample=prev)
    # by hand, from the two sigmas of step j (no scheduler arithmetic shared with the module)
    sigma, sigma_next = float(sched.sigmas[j]), float(sched.sigmas[j + 1])
    dt = sigma_next - sigma
    s = 0.7 * math.sqrt(sigma / (1 - sigma))
    want_mean = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    std = s * math.sqrt(-dt)
    want = torch.distributions.Normal(want_mean, std).log_prob(prev).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mean, want_mean, rtol=1e-5, atol=1e-6)
    assert torch.equal(out, prev) and std_dev_t.shape == (2,) and std_dev_t[0].item() == pytest.approx(s, rel=1e-6)


def test_the_first_step_of_an_unshifted_schedule_uses_the_second_sigma_as_flow_grpo_does():
    sched = scheduler(shift=1.0)
    assert float(sched.sigmas[0]) == 1.0
    x, v = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    _, _, _, std_dev_t = flow_sde_step_with_logprob(sched, v, sched.timesteps[0], x, noise_level=0.5)
    sigma_max = float(sched.sigmas[1])
    assert std_dev_t.item() == pytest.approx(0.5 * math.sqrt(1 / (1 - sigma_max)), rel=1e-6)


@pytest.mark.parametrize("j", [0, 5, 9])
def test_at_noise_level_zero_the_step_is_diffusers_euler_ode_step(j):
    sched = scheduler()
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
    t = sched.timesteps[j]
    ours, log_prob, _, _ = flow_sde_step_with_logprob(sched, v, t, x, noise_level=0.0)
    sched._step_index = None  # diffusers' step keeps a running index: point it at step j
    sched._init_step_index(t)
    torch.testing.assert_close(ours, sched.step(v, t, x, return_dict=False)[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(log_prob, torch.zeros(3))  # a point mass has no density: no policy gradient
    # and a small noise level moves the mean continuously toward it
    _, _, mean, _ = flow_sde_step_with_logprob(sched, v, t, x, noise_level=1e-3, prev_sample=ours)
    torch.testing.assert_close(mean, ours, rtol=1e-3, atol=1e-4)


def test_the_kl_of_two_steps_is_the_closed_form_of_two_gaussians_with_one_std():
    sched = scheduler()
    g = torch.Generator().manual_seed(2)
    x, va, vb = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    t = sched.timesteps[[2, 7]]  # one timestep per sample
    kl = flow_gaussian_kl(sched, va, vb, t, x, noise_level=0.7)
    for i in range(2):
        _, _, mu_a, s = flow_sde_step_with_logprob(sched, va[i:i + 1], t[i], x[i:i + 1])
        _, _, mu_b, _ = flow_sde_step_with_logprob(sched, vb[i:i + 1], t[i], x[i:i + 1])
        j = [2, 7][i]
        std = s.item() * math.sqrt(float(sched.sigmas[j] - sched.sigmas[j + 1]))
        want = torch.distributions.kl_divergence(torch.distributions.Normal(mu_a, std),
                                                 torch.distributions.Normal(mu_b, std)).mean()
        assert kl[i].item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.equal(flow_gaussian_kl(sched, va, va, t, x), torch.zeros(2))


def test_a_timestep_that_is_not_the_schedules_is_refused():
    with pytest.raises(ValueError, match="not one of the scheduler's"):
        flow_sde_step_with_logprob(scheduler(10), torch.zeros(1, 1, 2, 2), 123.4, torch.zeros(1, 1, 2, 2))


def test_sampled_chains_rescore_to_their_own_log_probs_and_depend_only_on_prompt_and_seed(tiny_sd3_pipe):
    pipe = tiny_sd3_pipe
    traj = sample_flow_trajectories(pipe, PROMPTS, [3, 4, 5], num_inference_steps=4, guidance_scale=3.0)
    assert traj.latents.shape == (3, 5, 4, 8, 8) and traj.log_probs.shape == (3, 4)
    assert traj.pooled_prompt_embeds.shape[0] == 3 and traj.images.shape == (3, 3, 16, 16)
    again = recompute_flow_log_probs(pipe.transformer, pipe.scheduler, traj, torch.tensor([[0, 3], [1, 2], [3, 0]]))
    want = traj.log_probs.gather(1, torch.tensor([[0, 3], [1, 2], [3, 0]]))
    torch.testing.assert_close(again.log_prob, want, rtol=1e-5, atol=1e-5)  # PPO's ratio is 1 at the start
    alone = sample_flow_trajectories(pipe, PROMPTS[1:2], [4], num_inference_steps=4, guidance_scale=3.0)
    torch.testing.assert_close(alone.images[0], traj.images[1], rtol=0, atol=1e-5)
    sub = traj[[2, 0]]
    assert sub.prompts == [PROMPTS[2], PROMPTS[0]] and torch.equal(sub.pooled_prompt_embeds[0],
                                                                   traj.pooled_prompt_embeds[2])


def test_the_kl_to_a_reference_is_zero_for_the_same_model(tiny_sd3_pipe):
    pipe = tiny_sd3_pipe
    traj = sample_flow_trajectories(pipe, PROMPTS[:2], [0, 1], num_inference_steps=3, guidance_scale=2.0)
    out = recompute_flow_log_probs(pipe.transformer, pipe.scheduler, traj, 1, reference=pipe.transformer)
    assert out.kl.shape == (2,) and torch.allclose(out.kl, torch.zeros(2), atol=1e-10)


def test_eval_images_are_the_stock_pipelines_per_image(tiny_sd3_pipe):
    from types import SimpleNamespace

    pipe = tiny_sd3_pipe
    cfg = SimpleNamespace(num_steps=2, eval_num_steps=3, guidance_scale=2.0, sample_batch_size=2, noise_level=0.7)
    ours = FlowFamily().generate(pipe, pipe.transformer, PROMPTS, [7, 8, 9], cfg)
    stock = pipe(prompt=[PROMPTS[2]], num_inference_steps=3, guidance_scale=2.0,
                 generator=[torch.Generator().manual_seed(9)], output_type="pt", return_dict=False)[0]
    assert ours.shape == (3, 3, 16, 16)
    torch.testing.assert_close(ours[2:], stock.float(), rtol=0, atol=1e-5)


def test_flow_grpo_fast_noises_only_its_window_and_the_rest_is_the_ode(tiny_sd3_pipe):
    pipe = tiny_sd3_pipe
    kw = dict(num_inference_steps=4, guidance_scale=2.0, noise_level=0.7)
    fast = sample_flow_trajectories(pipe, PROMPTS[:2], [3, 4], sde_steps=[1, 2], **kw)
    assert fast.train_steps.tolist() == [1, 2] and fast[[1]].train_steps.tolist() == [1, 2]
    assert torch.equal(fast.log_probs[:, [0, 3]], torch.zeros(2, 2)) and (fast.log_probs[:, [1, 2]] != 0).all()
    ode = sample_flow_trajectories(pipe, PROMPTS[:2], [3, 4], **{**kw, "noise_level": 0.0})
    torch.testing.assert_close(fast.latents[:, 1], ode.latents[:, 1])  # step 0 was the ODE's
    assert not torch.allclose(fast.latents[:, 3], ode.latents[:, 3])  # the window's noise changed the rest
    again = recompute_flow_log_probs(pipe.transformer, pipe.scheduler, fast, fast.train_steps)
    torch.testing.assert_close(again.log_prob, fast.log_probs[:, 1:3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must be steps of the 4-step chain"):
        sample_flow_trajectories(pipe, PROMPTS[:1], [3], sde_steps=[4], **kw)


def test_the_fast_window_is_drawn_per_epoch_from_the_runs_seed():
    from types import SimpleNamespace

    from ddpo_study.flow_sampler import sde_window

    cfg = SimpleNamespace(sde_window=2, num_steps=10, seed=0)
    windows = [sde_window(cfg, e) for e in range(1, 30)]
    assert all(len(w) == 2 and 0 <= w.start <= 8 for w in windows) and len({w.start for w in windows}) > 3
    assert sde_window(cfg, 5) == sde_window(cfg, 5) and sde_window(SimpleNamespace(sde_window=0), 5) is None
