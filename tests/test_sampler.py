"""The sampler against diffusers' own DDIM step and pipeline, and the ratio-is-one invariant of training."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from ddpo_study.finetune import prepare_unet
from ddpo_study.ppo import select_timesteps
from ddpo_study.sampler import (
    ddim_step_with_logprob,
    guided_noise_pred,
    recompute_log_probs,
    sample_trajectories,
)
from ddpo_study.trajectory import Trajectory
from tests.conftest import SD_SCHEDULER_CONFIG

SHAPE = (3, 4, 8, 8)
PROMPTS = ["a red circle", "a blue square on the left", "a green triangle"]


def make_scheduler(num_inference_steps=10, **overrides) -> DDIMScheduler:
    scheduler = DDIMScheduler(**{**SD_SCHEDULER_CONFIG, **overrides})
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def random_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)


def diffusers_prev(scheduler, model_output, t, sample, eta, noise):
    return scheduler.step(model_output, t, sample, eta=eta, variance_noise=noise).prev_sample


# ---------------------------------------------------------------------------------------------- the DDIM step


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
def test_eta0_equals_diffusers_step(prediction_type, set_alpha_to_one):
    scheduler = make_scheduler(prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one)
    model_output, sample = random_inputs()
    for t in scheduler.timesteps:  # includes the final step, whose previous alpha is final_alpha_cumprod
        expected = scheduler.step(model_output, t, sample, eta=0.0).prev_sample
        prev, log_prob = ddim_step_with_logprob(scheduler, model_output, t, sample, eta=0.0)
        torch.testing.assert_close(prev, expected, rtol=0, atol=1e-6)
        assert torch.equal(log_prob, torch.zeros(SHAPE[0]))  # documented: sigma_t = 0 -> log_prob 0


def test_eta1_sampling_uses_the_same_noise_as_diffusers():
    scheduler = make_scheduler()
    model_output, sample = random_inputs()
    t = scheduler.timesteps[3]
    expected = scheduler.step(model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(7)).prev_sample
    prev, _ = ddim_step_with_logprob(
        scheduler, model_output, t, sample, eta=1.0, generator=torch.Generator().manual_seed(7)
    )
    torch.testing.assert_close(prev, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("set_alpha_to_one", [False, True])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_log_prob_is_the_closed_form_gaussian(prediction_type, set_alpha_to_one, eta):
    scheduler = make_scheduler(prediction_type=prediction_type, set_alpha_to_one=set_alpha_to_one)
    model_output, sample = random_inputs(1)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for t in scheduler.timesteps:
        x_prev = diffusers_prev(scheduler, model_output, t, sample, eta, noise)
        # The Gaussian by hand: its mean is diffusers' step with zero noise, its std eta * sqrt(var(t, t_prev)).
        mean = diffusers_prev(scheduler, model_output, t, sample, eta, torch.zeros(SHAPE))
        std = eta * scheduler._get_variance(int(t), int(t) - step) ** 0.5

        prev, log_prob = ddim_step_with_logprob(scheduler, model_output, t, sample, eta=eta, prev_sample=x_prev)
        assert prev is x_prev
        assert log_prob.shape == (SHAPE[0],) and log_prob.dtype == torch.float32
        if std == 0:  # the last step when set_alpha_to_one=True: a point mass, documented as log_prob 0
            assert set_alpha_to_one and t == scheduler.timesteps[-1]
            assert torch.equal(log_prob, torch.zeros(SHAPE[0]))
            continue
        expected = torch.distributions.Normal(mean, std).log_prob(x_prev).mean(dim=(1, 2, 3))
        torch.testing.assert_close(log_prob, expected, rtol=1e-5, atol=1e-4)

        # And our own sampling path draws exactly diffusers' x_prev from that Gaussian.
        ours, _ = ddim_step_with_logprob(
            scheduler, model_output, t, sample, eta=eta, generator=torch.Generator().manual_seed(3)
        )
        ref = scheduler.step(model_output, t, sample, eta=eta, generator=torch.Generator().manual_seed(3)).prev_sample
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_log_prob_peaks_at_the_mean():
    """Non-tautology guard: a sample far from the mean scores lower than the mean itself."""
    scheduler = make_scheduler()
    model_output, sample = random_inputs()
    t = scheduler.timesteps[2]
    mean, _ = ddim_step_with_logprob(scheduler, model_output, t, sample, eta=0.0)
    _, at_mean = ddim_step_with_logprob(scheduler, model_output, t, sample, eta=1.0, prev_sample=mean)
    _, off_mean = ddim_step_with_logprob(scheduler, model_output, t, sample, eta=1.0, prev_sample=mean + 0.5)
    assert (at_mean > off_mean).all()


def test_per_sample_timesteps_equal_scalar_calls():
    scheduler = make_scheduler()
    model_output, sample = random_inputs()
    timesteps = scheduler.timesteps[torch.tensor([0, 5, 9])]  # includes the final step
    x_prev = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    prev0, _ = ddim_step_with_logprob(scheduler, model_output, timesteps, sample, eta=0.0)
    _, log_prob = ddim_step_with_logprob(scheduler, model_output, timesteps, sample, eta=1.0, prev_sample=x_prev)
    for i, t in enumerate(timesteps):
        one = slice(i, i + 1)
        p, _ = ddim_step_with_logprob(scheduler, model_output[one], int(t), sample[one], eta=0.0)
        _, lp = ddim_step_with_logprob(scheduler, model_output[one], t, sample[one], eta=1.0, prev_sample=x_prev[one])
        torch.testing.assert_close(prev0[one], p, rtol=0, atol=1e-6)
        torch.testing.assert_close(log_prob[one], lp, rtol=0, atol=1e-6)
    assert log_prob.unique().numel() == 3  # the steps really differ


def test_half_inputs_give_float32_log_probs_and_half_samples():
    scheduler = make_scheduler()
    model_output, sample = random_inputs()
    t = scheduler.timesteps[1]
    generator = torch.Generator().manual_seed(0)
    prev, log_prob = ddim_step_with_logprob(scheduler, model_output.half(), t, sample.half(), generator=generator)
    assert prev.dtype == torch.float16 and log_prob.dtype == torch.float32
    # Re-scoring the returned half sample reproduces the sampling log-prob exactly.
    _, again = ddim_step_with_logprob(scheduler, model_output.half(), t, sample.half(), prev_sample=prev)
    assert torch.equal(log_prob, again)


# ---------------------------------------------------------------------------------------------- the sampler


def test_trajectory_shapes_and_indexing(tiny_pipe):
    traj = sample_trajectories(tiny_pipe, PROMPTS, [0, 1, 2], num_inference_steps=3, guidance_scale=5.0)
    assert len(traj) == 3 and traj.num_steps == 3
    assert traj.latents.shape == (3, 4, 4, 8, 8)
    assert traj.log_probs.shape == (3, 3) and traj.timesteps.shape == (3,)
    assert traj.prompt_embeds.shape == traj.negative_prompt_embeds.shape == (3, 16, 16)
    assert traj.images.shape == (3, 3, 16, 16) and 0 <= traj.images.min() and traj.images.max() <= 1
    # The negative embedding is the empty prompt's, identical for every sample.
    assert torch.equal(traj.negative_prompt_embeds[0], traj.negative_prompt_embeds[2])
    assert not torch.equal(traj.prompt_embeds[0], traj.prompt_embeds[2])

    sub = traj[[2, 0]]
    assert sub.prompts == [PROMPTS[2], PROMPTS[0]] and sub.seeds == [2, 0]
    assert torch.equal(sub.latents[0], traj.latents[2]) and torch.equal(sub.log_probs[1], traj.log_probs[0])
    again = Trajectory.cat([traj[0:2], traj[2:]])
    assert again.prompts == traj.prompts and torch.equal(again.latents, traj.latents)
    assert torch.equal(again.images, traj.images)


def test_image_depends_only_on_prompt_and_seed(tiny_pipe):
    kwargs = dict(num_inference_steps=3, guidance_scale=5.0, eta=1.0)
    full = sample_trajectories(tiny_pipe, PROMPTS, [10, 11, 12], **kwargs)
    reordered = sample_trajectories(tiny_pipe, [PROMPTS[2], PROMPTS[0]], [12, 10], **kwargs)
    chunked = sample_trajectories(tiny_pipe, PROMPTS, [10, 11, 12], batch_size=2, **kwargs)
    for a, b in [(full[2], reordered[0]), (full[0], reordered[1]), (full, chunked)]:
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=1e-5)
        torch.testing.assert_close(a.log_probs, b.log_probs, rtol=0, atol=1e-4)
    # Guard: another seed for the same prompt gives another image.
    other = sample_trajectories(tiny_pipe, [PROMPTS[0]], [99], **kwargs)
    assert (other.images - full[0].images).abs().max() > 1e-3


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_eta0_sampler_matches_stock_pipeline(tiny_pipe, guidance_scale):
    seeds = [3, 4]
    ours = sample_trajectories(
        tiny_pipe, PROMPTS[:2], seeds, num_inference_steps=4, guidance_scale=guidance_scale, eta=0.0
    )
    stock = tiny_pipe(
        PROMPTS[:2],
        num_inference_steps=4,
        guidance_scale=guidance_scale,
        eta=0.0,
        output_type="np",
        generator=[torch.Generator().manual_seed(s) for s in seeds],
    ).images
    torch.testing.assert_close(ours.images.permute(0, 2, 3, 1), torch.from_numpy(stock), rtol=0, atol=1e-5)
    assert torch.equal(ours.log_probs, torch.zeros(2, 4))


def _perturb(params, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_recomputed_log_probs_reproduce_sampling(tiny_pipe, mode, guidance_scale):
    """THE invariant of DDPO's importance ratio: with unchanged weights, re-scoring = sampling (ratio 1)."""
    unet = tiny_pipe.unet
    params = prepare_unet(unet, mode, lora_rank=2, lora_alpha=4.0)
    if mode == "lora":  # B starts at 0; make the adapter actually change the function
        _perturb([p for n, p in unet.named_parameters() if "lora_B" in n], scale=0.2)
    num_steps = 4
    traj = sample_trajectories(
        tiny_pipe, PROMPTS, [0, 1, 2], num_inference_steps=num_steps, guidance_scale=guidance_scale
    )

    # All steps of every sample, in a different random order per sample, in ONE UNet call.
    index = select_timesteps(num_steps, 1.0, len(traj), torch.Generator().manual_seed(0))
    log_prob = recompute_log_probs(unet, tiny_pipe.scheduler, traj, index).log_prob
    old = traj.log_probs.gather(1, index)
    assert log_prob.shape == index.shape and log_prob.requires_grad
    torch.testing.assert_close(torch.exp(log_prob - old), torch.ones_like(old), rtol=0, atol=1e-5)

    # The other index forms: one int for all samples, and a shared (K,) list.
    scheduler = tiny_pipe.scheduler
    torch.testing.assert_close(recompute_log_probs(unet, scheduler, traj, 2).log_prob, traj.log_probs[:, 2], rtol=0, atol=1e-5)
    torch.testing.assert_close(
        recompute_log_probs(unet, scheduler, traj, [3, 0]).log_prob, traj.log_probs[:, [3, 0]], rtol=0, atol=1e-5
    )

    # Gradients reach the trainable parameters.
    log_prob.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)

    # Guard: after a weight change the ratio is no longer 1, so the check above can fail.
    _perturb(params, scale=0.05, seed=1)
    with torch.no_grad():
        moved = recompute_log_probs(unet, tiny_pipe.scheduler, traj, index).log_prob
    assert (moved - old).abs().max() > 1e-4


def test_guided_noise_pred_is_classifier_free_guidance(tiny_pipe):
    unet = tiny_pipe.unet
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(2, 16, 16, generator=g), torch.randn(1, 16, 16, generator=g)
    t = torch.tensor([901, 401])
    with torch.no_grad():
        eps_c = unet(latents, t, encoder_hidden_states=cond).sample
        eps_u = unet(latents, t, encoder_hidden_states=uncond.expand(2, -1, -1)).sample
        guided = guided_noise_pred(unet, latents, t, cond, uncond, 7.5)
        unguided = guided_noise_pred(unet, latents, t, cond, uncond, 1.0)
    torch.testing.assert_close(guided, eps_u + 7.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unguided, eps_c, rtol=0, atol=0)
