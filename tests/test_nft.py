"""DiffusionNFT (``ddpo_study.nft``): the loss against a hand computation, r's normalisation, the epsilon / velocity /
x0 weighting, the step measure against the closed-form KL, and runs on both tiny toys that train, resume exactly
and refuse what they cannot do."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from ddpo_study import algorithm, nft, seeding, train
from ddpo_study.config import NFT_KEYS, ConfigError, DDPOConfig, unused_keys
from ddpo_study.flow_sampler import FlowFamily, flow_gaussian_kl, flow_kl_factor
from ddpo_study.sampler import DDIMFamily, ddim_gaussian_kl, ddim_kl_factor
from ddpo_study.stat_tracking import PerPromptStatTracker
from tests.conftest import SD_SCHEDULER_CONFIG, tiny_config

pytestmark = pytest.mark.usefixtures("module_one_thread")

#: A flow "pipeline" as far as the forward process needs one: sigma = timestep / 1000.
FLOW_PIPE = SimpleNamespace(scheduler=SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000)))


# ----------------------------------------------------------------------------------------------- the loss
def test_the_loss_matches_a_hand_computation():
    # one flow sample at sigma = 0.5: x_t = (x0 + eps) / 2, v = eps - x0 = (-1, 2)
    x0, eps, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([500.0])
    fam = FlowFamily()
    x_t = fam.forward_process(FLOW_PIPE, x0, eps, t)
    assert x_t.tolist() == [[0.5, 1.0]]
    pred, old = torch.tensor([[-1.0, 1.0]]), torch.tensor([[0.0, 2.0]])
    r = nft.optimality_probability(torch.tensor([2.0]), 5.0)  # A = 2 -> r = 2/10 + 1/2
    assert r.item() == pytest.approx(0.7)

    def loss(beta, weighting, r=r):
        return nft.nft_loss(fam, FLOW_PIPE, pred, old, x0, x_t, t, r, beta, weighting, 5.0).item()

    # beta 1: o+ = pred, v-error (0, -1), |.|^2 = 0.5; o- = 2 old - pred = (1, 3), v-error (2, 1), |.|^2 = 2.5
    assert loss(1.0, "velocity") == pytest.approx(5 * (0.7 * 0.5 + 0.3 * 2.5))
    # x0-errors are -sigma times the v-errors: (0, 0.5) and (-1, -0.5); adaptive = mean sq / mean abs
    assert loss(1.0, "adaptive") == pytest.approx(5 * (0.7 * 0.125 / 0.25 + 0.3 * 0.625 / 0.75))
    # epsilon-errors are (1 - sigma) times the v-errors
    assert loss(1.0, "epsilon") == pytest.approx(5 * (0.7 * 0.125 + 0.3 * 0.625))
    # beta 0.5: o+ = (-0.5, 1.5), error (0.5, -0.5) -> 0.25; o- = 1.5 old - 0.5 pred = (0.5, 2.5), error (1.5, 0.5)
    # -> 1.25; the scale is A_max / beta = 10
    assert loss(0.5, "velocity", r=torch.tensor([0.9])) == pytest.approx(10 * (0.9 * 0.25 + 0.1 * 1.25))


def test_at_the_old_policy_the_gradient_is_the_advantage_times_the_regression_gradient():
    fam = FlowFamily()
    x0, eps, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([500.0])
    x_t = fam.forward_process(FLOW_PIPE, x0, eps, t)
    for beta in (1.0, 0.1):
        pred = torch.tensor([[0.0, 2.0]], requires_grad=True)  # = the old prediction; error (1, 0)
        nft.nft_loss(fam, FLOW_PIPE, pred, pred.detach(), x0, x_t, t, torch.tensor([0.7]), beta, "velocity",
                     5.0).sum().backward()
        # A = (2r - 1) A_max = 2; d mean((pred - v)^2) / d pred = (pred - v) = (1, 0)
        assert pred.grad[0].tolist() == pytest.approx([2.0, 0.0])


def test_r_is_the_groups_normalised_advantage_clipped_into_0_1():
    rewards = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 50.0])
    prompts = ["a"] * 4 + ["b"] * 4
    adv = PerPromptStatTracker(4, 4).update(prompts, rewards)  # each group its own baseline (the study's)
    r = nft.optimality_probability(torch.as_tensor(adv), 5.0).numpy()
    a = rewards[:4] - rewards[:4].mean()
    np.testing.assert_allclose(r[:4], a / (a.std() + 1e-6) / 10 + 0.5, rtol=1e-6)
    np.testing.assert_allclose([r[:4].mean(), r[4:].mean()], [0.5, 0.5], atol=1e-6)  # an average sample is 1/2
    assert r[7] == pytest.approx(0.5 + np.sqrt(3) / 10, rel=1e-5)  # |A| <= sqrt(n - 1) within a group of n
    clipped = nft.optimality_probability(torch.tensor([-9.0, -5.0, 0.0, 2.5, 5.0, 7.0]), 5.0)
    assert clipped.tolist() == pytest.approx([0.0, 0.0, 0.5, 0.75, 1.0, 1.0])


def test_the_old_policys_decay_follows_diffusionnfts_schedules():
    type1 = [nft.old_decay(s, 0.001, 0.5) for s in (0, 10, 499, 500, 2000)]
    assert type1 == pytest.approx([0.0, 0.01, 0.499, 0.5, 0.5])
    type2 = [nft.old_decay(s, 0.0075, 0.999, flat_steps=75) for s in (0, 74, 75, 175, 500)]
    assert type2 == pytest.approx([0.0, 0.0, 0.0, 0.75, 0.999])
    p = torch.nn.Parameter(torch.randn(3, 2))
    before = p.detach().clone()
    with nft.swapped_in([p], [torch.zeros(3, 2)]):
        assert (p == 0).all()
    assert torch.equal(p.detach(), before)  # back bit for bit


# ----------------------------------------------------------------------------------------------- the weighting
def test_epsilon_velocity_and_x0_errors_differ_by_a_weighting_in_t_and_adaptive_is_the_same_for_both():
    pipe = SimpleNamespace(scheduler=DDIMScheduler(**SD_SCHEDULER_CONFIG))
    ddim, flow = DDIMFamily(), FlowFamily()
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([1, 250, 500, 750, 999])
    x0, eps, eps_hat, eps_old = (torch.randn(5, 4, 3, 3, generator=g) for _ in range(4))
    x_t = ddim.forward_process(pipe, x0, eps, t)
    alpha, sigma = ddim.forward_coefficients(pipe, t)
    x0_hat = ddim.x0_prediction(pipe, eps_hat, x_t, t)

    def mean_sq(x):
        return x.pow(2).mean(dim=(1, 2, 3))

    torch.testing.assert_close(nft.weighted_x0_loss(x0_hat - x0, alpha, sigma, "epsilon"), mean_sq(eps_hat - eps))
    # the same model in rectified-flow coordinates: x_t / (alpha + sigma) = (1 - s) x0 + s eps, v = eps - x0
    c = (alpha + sigma).reshape(-1, 1, 1, 1)
    s = sigma / (alpha + sigma)
    v_hat, v = eps_hat - x0_hat, eps - x0
    torch.testing.assert_close(flow.forward_process(FLOW_PIPE, x0, eps, s * 1000), x_t / c)
    torch.testing.assert_close(flow.x0_prediction(FLOW_PIPE, v_hat, x_t / c, s * 1000), x0_hat)
    weight = (1 + sigma / alpha) ** 2
    torch.testing.assert_close(mean_sq(v_hat - v), weight * mean_sq(eps_hat - eps))
    torch.testing.assert_close(nft.weighted_x0_loss(x0_hat - x0, alpha, sigma, "velocity"), mean_sq(v_hat - v))
    assert weight[0].item() == pytest.approx(1.084, abs=1e-3) and weight[-1].item() == pytest.approx(243.8, abs=0.1)
    # the whole NFT loss is the same computed from the UNet's epsilons or from the velocities they imply (the
    # implicit policies commute with the affine map), for every weighting
    to_v = lambda e: e - ddim.x0_prediction(pipe, e, x_t, t)  # noqa: E731
    r = torch.tensor([0.1, 0.4, 0.5, 0.8, 1.0])
    for weighting in ("adaptive", "epsilon", "velocity"):
        for beta in (1.0, 0.1):
            from_eps = nft.nft_loss(ddim, pipe, eps_hat, eps_old, x0, x_t, t, r, beta, weighting)
            from_v = nft.nft_loss(flow, FLOW_PIPE, to_v(eps_hat), to_v(eps_old), x0, x_t / c, s * 1000, r, beta,
                                  weighting)
            torch.testing.assert_close(from_eps, from_v, rtol=2e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------- the step measure
@pytest.mark.parametrize("num_steps, eta", [(20, 1.0), (10, 1.0), (20, 0.5)])
def test_the_ddim_step_kl_is_kappa_times_the_mean_squared_change(num_steps, eta):
    scheduler = DDIMScheduler(**SD_SCHEDULER_CONFIG)
    scheduler.set_timesteps(num_steps)
    t = scheduler.timesteps
    g = torch.Generator().manual_seed(1)
    x_t, a, b = (torch.randn(len(t), 4, 3, 3, generator=g) for _ in range(3))
    want = ddim_gaussian_kl(scheduler, a, b, t, x_t, eta=eta)
    kappa = ddim_kl_factor(scheduler, t, num_steps, eta)
    torch.testing.assert_close(kappa * (a - b).pow(2).mean(dim=(1, 2, 3)), want, rtol=1e-4, atol=0)
    family_kappa = DDIMFamily().kl_factor(SimpleNamespace(scheduler=scheduler), t, num_steps, SimpleNamespace(eta=eta))
    torch.testing.assert_close(family_kappa, kappa)


@pytest.mark.parametrize("num_steps, noise_level, shift", [(10, 0.7, 3.0), (4, 1.0, 1.0)])
def test_the_flow_step_kl_is_kappa_times_the_mean_squared_change(num_steps, noise_level, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    t = scheduler.timesteps
    g = torch.Generator().manual_seed(2)
    x, a, b = (torch.randn(len(t), 4, 3, 3, generator=g) for _ in range(3))
    want = flow_gaussian_kl(scheduler, a, b, t, x, noise_level)
    kappa = flow_kl_factor(scheduler, t, noise_level)
    torch.testing.assert_close(kappa * (a - b).pow(2).mean(dim=(1, 2, 3)), want, rtol=1e-4, atol=0)
    pipe = SimpleNamespace(scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))  # at no schedule yet
    family = FlowFamily()
    torch.testing.assert_close(family.schedule(pipe, num_steps), t)
    torch.testing.assert_close(family.kl_factor(pipe, t, num_steps, SimpleNamespace(noise_level=noise_level)), kappa)


def test_the_probe_measures_the_closed_form_kl_at_forward_process_states(tiny_pipe):
    from ddpo_study.sampler import sample_trajectories

    cfg = DDPOConfig(algorithm="nft", seed=3, samples_per_epoch=4, images_per_prompt=2, num_steps=4,
                     nft_probe_steps=10, eta=1.0, guidance_scale=2.0)
    batch = sample_trajectories(tiny_pipe, ["a red circle"] * 2 + ["a blue square"] * 2, [0, 1, 2, 3],
                                num_inference_steps=4, guidance_scale=2.0, eta=0.0)
    family, unet = DDIMFamily(), tiny_pipe.unet
    probe = nft.ForwardStepProbe(cfg, family, tiny_pipe, batch, epoch=1)
    schedule = family.schedule(tiny_pipe, 10)
    assert len(probe.rows) == 4 and all(t in schedule for t in probe.timesteps)
    before = probe.outputs(unet)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    after = probe.outputs(unet)
    scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config)
    scheduler.set_timesteps(10)
    want = ddim_gaussian_kl(scheduler, before, after, probe.timesteps, probe.x_t, eta=1.0).mean().item()
    assert probe.kl(before, after) == pytest.approx(want, rel=1e-4) and want > 0
    # the states are the batch's x0 forward-noised, drawn from the run's NFT probe stream
    assert torch.equal(probe.x_t, nft.ForwardStepProbe(cfg, family, tiny_pipe, batch, epoch=1).x_t)
    assert not torch.equal(probe.x_t, nft.ForwardStepProbe(cfg, family, tiny_pipe, batch, epoch=2).x_t)


# ----------------------------------------------------------------------------------------------- runs
NFT_UNET = dict(algorithm="nft", target_kl=0.002, nft_sample_eta=0.0, nft_timesteps_per_sample=2,
                nft_decay_rate=0.1, nft_decay_max=0.5)
NFT_FLOW = dict(NFT_UNET, num_steps=3, eval_num_steps=4, nft_timesteps_per_sample=0)


def test_nft_trains_the_tiny_unet_and_the_tiny_sd3_through_the_same_driver(tiny_model_dir, tiny_sd3_model_dir,
                                                                         tiny_prompt_files, tmp_path):
    unet = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "unet", **NFT_UNET), progress=False)
    flow = train.run(tiny_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "flow", mode="full",
                                 guidance_scale=1.0, nft_kl_beta=0.01, **NFT_FLOW), progress=False)
    for out, kl_to_base in ((unet, False), (flow, True)):
        df = pd.read_csv(out / "metrics.csv")
        assert df["epoch"].tolist() == [0, 1, 2]
        assert (df["train_optimizer_steps"].iloc[1:] == 2).all() and (df["train_step_kl"].iloc[1:] > 0).all()
        assert (df["train_old_deviation"].iloc[1:] > 0).all() and df["param_dist"].iloc[-1] > 0
        assert df["train_old_decay"].iloc[1:].tolist() == pytest.approx([0.2, 0.4])  # 0.1 per step, 2 a epoch
        assert ("train_kl_to_base" in df) == kl_to_base and "train_approx_kl" not in df
    assert (unet / "final" / "lora").is_dir() and (flow / "final" / "transformer").is_dir()


@pytest.mark.parametrize("toy", ["unet", "sd3"])
def test_a_killed_nft_run_resumes_to_the_same_numbers(toy, tiny_model_dir, tiny_sd3_model_dir, tiny_prompt_files,
                                                      tmp_path, monkeypatch):
    model, settings = ((tiny_model_dir, dict(NFT_UNET, mode="lora")) if toy == "unet" else
                       (tiny_sd3_model_dir, dict(NFT_FLOW, mode="full", nft_guided=False)))
    whole = train.run(tiny_config(model, tiny_prompt_files, tmp_path / "whole", num_epochs=3, **settings),
                      progress=False)
    real = train.train_epoch

    def crash_at_3(state, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return real(state, epoch)

    cfg = tiny_config(model, tiny_prompt_files, tmp_path / "killed", num_epochs=3, **settings)
    monkeypatch.setattr(train, "train_epoch", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, progress=False)
    ckpt = tmp_path / "killed" / "checkpoints" / "latest"
    assert (ckpt / "objective.safetensors").is_file()  # the old policy is part of the resume state
    monkeypatch.setattr(train, "train_epoch", real)
    resumed = train.run(cfg, progress=False)
    a, b = (pd.read_csv(d / "metrics.csv") for d in (whole, resumed))
    same = [c for c in a.columns if not c.startswith("time_") and c != "cpu_epoch_s"]
    pd.testing.assert_frame_equal(a[same], b[same], rtol=1e-5, atol=1e-7)


def test_a_checkpoint_without_the_old_policy_is_one_clear_error(tiny_model_dir, tiny_prompt_files, tmp_path):
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", num_epochs=1, **NFT_UNET)
    out = train.run(cfg, progress=False)
    (out / "checkpoints" / "latest" / "objective.safetensors").unlink()
    with pytest.raises(ValueError, match="holds no NFT old policy"):
        train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", num_epochs=2, **NFT_UNET),
                  progress=False)


# ----------------------------------------------------------------------------------------------- registry, config
def test_nft_trains_either_family_and_ppo_names_keep_their_one_error():
    cfg = DDPOConfig(algorithm="nft")
    assert isinstance(algorithm.make_objective("nft", cfg, DDIMFamily()), nft.NFT)
    assert isinstance(algorithm.make_objective("nft", cfg, FlowFamily()), nft.NFT)
    with pytest.raises(ValueError, match="'flow_grpo' trains an SD3-type .* this model is an SD-type"):
        algorithm.make_objective("flow_grpo", cfg, DDIMFamily())
    assert (seeding.NFT_PASS, seeding.NFT_PROBE) == (100, 198)  # pinned: they are part of every NFT run's numbers


@pytest.mark.parametrize("values, key", [
    ({"mode": "progressive"}, "mode"), ({"nft_beta": 0.0}, "nft_beta"), ({"nft_weighting": "snr"}, "nft_weighting"),
    ({"nft_decay_max": 1.0}, "nft_decay_max"), ({"nft_timesteps_per_sample": 21}, "nft_timesteps_per_sample"),
    ({"target_kl": 0.002, "eta": 0.0}, "eta"), ({"nft_sample_eta": -1.0}, "nft_sample_eta"),
])
def test_bad_nft_settings_name_the_field(values, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        DDPOConfig.from_dict({"algorithm": "nft", **values})


def test_keys_an_algorithm_never_reads_do_not_split_conditions():
    from ddpo_study.report import condition_factors

    assert set(NFT_KEYS) == {k for k in DDPOConfig().to_dict() if k.startswith("nft_")}
    assert set(NFT_KEYS) <= unused_keys("lora", "ddpo") and "noise_level" in unused_keys("lora", None)
    assert {"clip_range", "timestep_fraction", "kl_beta"} <= unused_keys("full", "nft")
    base = DDPOConfig().to_dict()
    rows = [dict(base, cell="d1", algorithm="ddpo", nft_beta=1.0, clip_range=1e-4),
            dict(base, cell="d2", algorithm="ddpo", nft_beta=0.1, clip_range=1e-4),
            dict(base, cell="n1", algorithm="nft", nft_beta=1.0, clip_range=0.5)]
    assert condition_factors(pd.DataFrame(rows)) == ["algorithm"]
    rows.append(dict(base, cell="n2", algorithm="nft", nft_beta=0.1, clip_range=0.7))
    assert condition_factors(pd.DataFrame(rows)) == ["algorithm", "nft_beta"]
