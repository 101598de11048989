"""PPO moves the policy the right way: after a few steps on a fixed batch, transitions with positive
advantage become more likely and those with negative advantage less likely (a sign check of the whole
sample -> recompute -> loss -> optimizer path, which unit checks of each piece cannot give)."""

import torch

from ddpo_study.finetune import prepare_unet
from ddpo_study.ppo import clipped_surrogate_loss
from ddpo_study.sampler import recompute_log_probs, sample_trajectories


def test_positive_advantage_transitions_gain_log_probability(tiny_pipe):
    pipe = tiny_pipe
    traj = sample_trajectories(pipe, ["a red circle"] * 4, [0, 1, 2, 3], num_inference_steps=4, guidance_scale=2.0)
    params = prepare_unet(pipe.unet, "lora", lora_rank=4, lora_alpha=4.0)
    _assert_positive_advantages_gain(lambda: recompute_log_probs(pipe.unet, pipe.scheduler, traj, torch.arange(4)),
                                     traj, params)


def _assert_positive_advantages_gain(rescore, traj, params):
    """Five SGD steps of the PPO loss with advantages (+1, +1, -1, -1); ``rescore()`` gives the chains' log-probs."""
    opt = torch.optim.SGD(params, lr=0.5)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    for _ in range(5):
        # a wide clip range: this checks the direction of the gradient, not the trust region
        loss, _ = clipped_surrogate_loss(rescore().log_prob, traj.log_probs, adv, clip_range=10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        delta = (rescore().log_prob - traj.log_probs).mean(dim=1)
    assert delta[:2].min() > delta[2:].max(), delta
    assert delta[:2].mean() > 0 > delta[2:].mean(), delta


def test_flow_grpo_positive_advantage_chains_gain_log_probability(tiny_sd3_pipe):
    """The same sign check through the flow SDE (Flow-GRPO's sampler and re-scoring)."""
    from ddpo_study.flow_sampler import recompute_flow_log_probs, sample_flow_trajectories

    pipe = tiny_sd3_pipe
    traj = sample_flow_trajectories(pipe, ["a red circle"] * 4, [0, 1, 2, 3], num_inference_steps=4,
                                    guidance_scale=2.0, noise_level=0.7)
    params = prepare_unet(pipe.transformer, "lora", lora_rank=4, lora_alpha=4.0,
                          target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    steps = torch.arange(4).expand(4, 4)
    _assert_positive_advantages_gain(lambda: recompute_flow_log_probs(pipe.transformer, pipe.scheduler, traj, steps),
                                     traj, params)
