"""The DDPO loop end to end on a tiny pipeline: outputs, modes, KL, and exact resume after a crash."""

import json

import numpy as np
import pandas as pd
import pytest

from ddpo_study import rundir, train
from ddpo_study.config import ConfigError, DDPOConfig
from tests.conftest import tiny_config


def test_lora_run_writes_metrics_eval_images_and_a_stock_loadable_lora(tiny_model_dir, tiny_prompt_files, tmp_path):
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "run")
    out = train.run(cfg, progress=False)
    df = pd.read_csv(out / "metrics.csv")
    assert df["epoch"].tolist() == [0, 1, 2]
    for col in ("reward_mean", "cross_div_clip", "within_div_pixel", "retrieval_acc", "train_reward_mean",
                "train_approx_kl", "param_dist"):
        assert col in df.columns, col
    assert df.loc[0, "param_dist"] == 0 and df.loc[2, "param_dist"] > 0
    with np.load(out / "eval" / "epoch_0002.npz") as data:
        assert data["images"].shape == (3, 2, 16, 16, 3) and data["images"].dtype == np.uint8
        assert list(data["prompts"]) == cfg_prompts(cfg)
        # per-image task rewards of exactly these images: their mean is the logged eval reward
        assert data["rewards"].shape == (3, 2)
        assert data["rewards"].mean() == pytest.approx(df.loc[2, "reward_mean"], rel=1e-9)
    assert (out / "eval" / "epoch_0000.png").is_file()
    assert (out / "checkpoints" / "latest" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "final" / "lora" / "pytorch_lora_weights.safetensors").is_file()  # kept after training
    assert not (out / "final" / "unet").exists()
    assert df["train_optimizer_steps"].iloc[1:].eq(cfg.samples_per_epoch // cfg.train_batch_size).all()
    assert (df["train_step_kl"].iloc[1:] > 0).all()
    assert json.loads((out / "config.json").read_text())["mode"] == "lora"
    assert (out / "DONE").is_file()


def cfg_prompts(cfg):
    from ddpo_study.prompts import load_prompts

    return load_prompts(cfg.eval_prompt_set)[: cfg.eval_num_prompts]


@pytest.mark.parametrize("mode", ["full", "progressive"])
def test_full_and_progressive_modes_train(mode, tiny_model_dir, tiny_prompt_files, tmp_path):
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / mode, mode=mode, eval_every=2, kl_beta=0.1)
    out = train.run(cfg, progress=False)
    df = pd.read_csv(out / "metrics.csv")
    assert df["param_dist"].iloc[-1] > 0
    assert "train_kl_to_base" in df.columns and df["train_kl_to_base"].iloc[1:].notna().all()
    phases = df["phase"].iloc[1:].tolist()
    assert phases == (["lora", "lora"] if mode == "progressive" else ["full", "full"])
    assert (out / "final" / "unet" / "config.json").is_file()
    assert (out / "final" / "lora").is_dir() == (mode == "progressive")


@pytest.mark.parametrize("mode", ["lora", "progressive"])  # progressive: resumed after its switch (epoch 1)
def test_crash_and_resume_equals_an_uninterrupted_run(mode, tiny_model_dir, tiny_prompt_files, tmp_path,
                                                      monkeypatch):
    settings = dict(num_epochs=3, mode=mode, target_kl=1e-4)  # the controller's lr must resume too
    ref = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "ref", **settings), progress=False)
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "crash", **settings)
    real_epoch = train.train_epoch

    def crash_at_epoch_3(state, epoch):
        if epoch == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_epoch(state, epoch)

    monkeypatch.setattr(train, "train_epoch", crash_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, progress=False)
    assert pd.read_csv(cfg.output_dir + "/metrics.csv")["epoch"].tolist() == [0, 1, 2]
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    train.run(cfg, progress=False)
    a = pd.read_csv(ref / "metrics.csv")
    a = a.drop(columns=[c for c in a if c.startswith(("time_", "cpu_"))])  # timings differ, results must not
    b = pd.read_csv(tmp_path / "crash" / "metrics.csv")[a.columns]
    assert b["epoch"].tolist() == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-6)


def test_a_different_config_in_the_same_folder_is_refused(tiny_model_dir, tiny_prompt_files, tmp_path):
    train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", num_epochs=1), progress=False)
    with pytest.raises(ValueError, match="different config"):
        train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", num_epochs=1, seed=5), progress=False)
    # a key LoRA never reads is not a different experiment: the finished run is found and kept
    before = (tmp_path / "r" / "metrics.csv").read_bytes()
    train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", num_epochs=1, full_learning_rate=0.5),
              progress=False)
    assert (tmp_path / "r" / "metrics.csv").read_bytes() == before


def test_a_finished_run_without_checkpoints_is_not_retrained(tiny_model_dir, tiny_prompt_files, tmp_path,
                                                               monkeypatch):
    """Committed results keep no checkpoints: rendering their report again must not train from scratch."""
    import shutil

    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", num_epochs=1)
    out = train.run(cfg, progress=False)
    shutil.rmtree(out / "checkpoints")
    before = (out / "metrics.csv").read_bytes()
    cfg_file = out / "config.json"
    saved_config = json.loads(cfg_file.read_text())
    del saved_config["log_with"]  # an older run's config.json lacks newer fields (they count as defaults)
    cfg_file.write_text(json.dumps(saved_config))  # and another layout than save_config's: a rewrite would show
    config_bytes = cfg_file.read_bytes()
    assert rundir.is_finished(out, 1) and not rundir.is_finished(out, 2)

    def no_loading(*args, **kwargs):
        raise AssertionError("a finished run loaded its pipeline")

    monkeypatch.setattr("ddpo_study.models.load_pipeline", no_loading)
    assert train.run(cfg, progress=False) == out
    assert (out / "metrics.csv").read_bytes() == before
    assert cfg_file.read_bytes() == config_bytes  # a finished run's committed config.json is not rewritten
    # asking for more epochs is a resume, which needs the pipeline again
    with pytest.raises(AssertionError, match="loaded its pipeline"):
        train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", num_epochs=2), progress=False)


def test_bad_inputs_fail_with_clear_messages(tiny_model_dir, tiny_prompt_files, tmp_path):
    from ddpo_study.models import ModelLoadError
    from ddpo_study.prompts import PromptSetError

    with pytest.raises(ConfigError, match="did you mean 'num_epochs'"):
        DDPOConfig.from_dict({"num_epoch": 3})
    with pytest.raises(PromptSetError, match="missing.txt"):
        train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "a", prompt_set=str(tmp_path / "missing.txt")))
    with pytest.raises(ModelLoadError, match="does not exist"):
        train.run(tiny_config(str(tmp_path / "no-model"), tiny_prompt_files, tmp_path / "b"))


def test_chunking_timesteps_changes_memory_not_math(tiny_model_dir, tiny_prompt_files, tmp_path):
    a = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "a", num_epochs=1, num_steps=6), progress=False)
    b = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "b", num_epochs=1, num_steps=6,
                              train_timesteps_per_pass=1), progress=False)
    cols = ["train_loss", "train_approx_kl", "param_dist", "reward_mean"]
    pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv")[cols], pd.read_csv(b / "metrics.csv")[cols],
                                  rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n_prompts, group", [(30, 8), (300, 8), (30, 1), (5, 4)])
def test_epoch_prompts_draws_groups_of_one_prompt_with_distinct_seeds(n_prompts, group):
    prompts = [f"prompt {i}" for i in range(n_prompts)]
    cfg = DDPOConfig(samples_per_epoch=64, images_per_prompt=group, seed=3)
    pairs = train.epoch_prompts(cfg, prompts, epoch=5)
    assert len(pairs) == 64
    assert pairs == train.epoch_prompts(cfg, prompts, epoch=5)  # a resumed run redraws the same epoch
    assert pairs != train.epoch_prompts(cfg, prompts, epoch=6)
    drawn = [p for p, _ in pairs]
    groups = [drawn[i:i + group] for i in range(0, 64, group)]
    assert all(len(set(g)) == 1 for g in groups)  # consecutive blocks share a prompt
    if group > 1:  # no prompt twice before every prompt once
        firsts = [g[0] for g in groups]
        assert len(set(firsts)) == min(len(groups), n_prompts)
        assert len(set(firsts[:n_prompts])) == min(len(groups), n_prompts)
    assert len({s for _, s in pairs}) == 64


def test_images_per_prompt_must_divide_the_epoch():
    with pytest.raises(ConfigError, match="images_per_prompt"):
        DDPOConfig(samples_per_epoch=64, images_per_prompt=6).validate()


def test_optimizer_steps_per_epoch_counts_steps_over_all_processes():
    cfg = DDPOConfig(samples_per_epoch=64, train_batch_size=16, gradient_accumulation_steps=4, inner_epochs=2)
    assert train.optimizer_steps_per_epoch(cfg) == 2
    assert train.optimizer_steps_per_epoch(cfg, world=2) == 2  # the step is over samples, not processes
    cfg = DDPOConfig(samples_per_epoch=64, train_batch_size=16, gradient_accumulation_steps=1)
    assert train.optimizer_steps_per_epoch(cfg, world=4) == 4
    with pytest.raises(ValueError, match="divide evenly over 3 processes"):
        train.optimizer_steps_per_epoch(cfg, world=3)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        DDPOConfig(samples_per_epoch=64, train_batch_size=16, gradient_accumulation_steps=3).validate()


def test_the_step_controller_brings_the_step_kl_to_its_target(tiny_model_dir, tiny_prompt_files, tmp_path):
    """Started 10x too fast (a step KL ~100x the target), the controller settles within a factor 2.5 of it."""
    fixed = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "fixed", num_epochs=1,
                                  eval_every=1), progress=False)
    kl_fixed = pd.read_csv(fixed / "metrics.csv")["train_step_kl"].iloc[1]
    target = kl_fixed / 100
    out = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "ctl", num_epochs=8, eval_every=8,
                                target_kl=target), progress=False)
    df = pd.read_csv(out / "metrics.csv").iloc[1:]
    assert df["learning_rate"].iloc[0] < 1e-2  # the first steps overshot: the rate came down at once
    late = df["train_step_kl"].iloc[-4:]
    assert abs(np.log(late.median() / target)) < np.log(2.5), (target, late.tolist())  # within 2.5x of the target
    assert abs(np.log(df["train_step_kl"].iloc[0] / target)) > np.log(10)  # ... from more than 10x above it


def test_the_logged_step_kl_equals_an_independent_computation(tiny_model_dir, tiny_prompt_files, tmp_path):
    """``train_step_kl`` against KL computed from two diffusers ``DDIMScheduler.step`` calls with shared noise:
    for Gaussians with the same sigma, KL = mean((x_a - x_b)^2) / (2 sigma^2) when x = mu + sigma z."""
    import copy

    import torch

    from ddpo_study import finetune
    from ddpo_study.models import load_pipeline
    from ddpo_study.ppo import PPO, StepProbe
    from ddpo_study.prompts import load_prompts
    from ddpo_study.sampler import DDIMFamily, guided_noise_pred
    from ddpo_study.stat_tracking import PerPromptStatTracker

    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "r", train_batch_size=8)  # one step
    pipe = load_pipeline(cfg.model)
    policy = finetune.policy_for_epoch(cfg, pipe.unet, 0)
    family = DDIMFamily()
    prompts = load_prompts(cfg.prompt_set)
    traj = train.sample_epoch(cfg, family, pipe, pipe.unet, prompts, epoch=1)
    adv = train.compute_advantages(cfg, PerPromptStatTracker(8, 2), traj.prompts, torch.randn(len(traj)).numpy())
    before = copy.deepcopy(pipe.unet)
    row = PPO(cfg, family).steps(pipe, pipe.unet, policy, traj, adv, epoch=1)
    assert row["train_optimizer_steps"] == 1

    rows, steps = StepProbe.choose(cfg, epoch=1)
    sched = pipe.scheduler
    kls = []
    with torch.no_grad():
        for r, j in zip(rows.tolist(), steps.reshape(-1).tolist()):
            x, t = traj.latents[r:r + 1, j], traj.timesteps[j]
            emb, neg = traj.prompt_embeds[r:r + 1], traj.negative_prompt_embeds[r:r + 1]
            outs = []
            for unet in (before, pipe.unet):
                eps = guided_noise_pred(unet, x, t, emb, neg, cfg.guidance_scale)
                outs.append(sched.step(eps, t, x, eta=cfg.eta, generator=torch.Generator().manual_seed(r)).prev_sample)
            prev_t = t - sched.config.num_train_timesteps // sched.num_inference_steps
            var = sched._get_variance(t, prev_t)
            kls.append(float(((outs[0] - outs[1]) ** 2).mean() / (2 * cfg.eta**2 * var)) if var > 0 else 0.0)
    assert row["train_step_kl"] == pytest.approx(float(np.mean(kls)), rel=1e-3)
    assert row["train_step_kl"] > 0


def test_log_with_tensorboard_logs_every_metrics_row(tiny_model_dir, tiny_prompt_files, tmp_path):
    """accelerate's tensorboard tracker (offline) gets each epoch's numbers, the same as metrics.csv."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "tb", log_with="tensorboard")
    out = train.run(cfg, progress=False)
    df = pd.read_csv(out / "metrics.csv")
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file under the run folder"
    logged = {}
    for f in events:
        acc = EventAccumulator(str(f)).Reload()
        for tag in acc.Tags()["scalars"]:
            logged.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    for col in ("reward_mean", "train_reward_mean", "train_step_kl"):
        rows = df[df[col].notna()]
        assert logged[col] == pytest.approx(dict(zip(rows["epoch"], rows[col])), rel=1e-6), col
    # and the eval image grid at each eval, the same pixels as eval/epoch_XXXX.png
    from PIL import Image

    images = {}
    for f in events:
        acc = EventAccumulator(str(f), size_guidance={"images": 0}).Reload()
        for tag in acc.Tags()["images"]:
            images.update({e.step: e for e in acc.Images(tag)})
    assert sorted(images) == df.loc[df["reward_mean"].notna(), "epoch"].tolist()
    png = Image.open(out / "eval" / "epoch_0002.png").convert("RGB")
    assert (images[2].width, images[2].height) == png.size
    with pytest.raises(ConfigError, match="log_with='tensorbord': names accelerate trackers"):
        DDPOConfig(log_with="tensorbord").validate()


def test_eval_cadence_does_not_change_training(tiny_model_dir, tiny_prompt_files, tmp_path):
    """Evals draw their own per-image noise, so evaluating less often (a shorter demo) trains the same run."""
    runs = {every: train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / f"e{every}", num_epochs=2,
                                         eval_every=every), progress=False) for every in (1, 2)}
    a, b = (pd.read_csv(runs[every] / "metrics.csv").set_index("epoch") for every in (1, 2))
    assert a["reward_mean"].notna().sum() == 3 and b["reward_mean"].notna().sum() == 2  # epochs 0, 1, 2 vs 0, 2
    cols = ["train_loss", "train_reward_mean", "train_step_kl", "learning_rate", "param_dist"]
    pd.testing.assert_frame_equal(a.loc[[1, 2], cols], b.loc[[1, 2], cols])
    assert a.loc[2, "reward_mean"] == b.loc[2, "reward_mean"]  # the last eval sees the same weights


def test_init_lora_starts_the_run_from_another_runs_adapter(tiny_model_dir, tiny_prompt_files, tmp_path):
    first = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "first"), progress=False)
    before = pd.read_csv(first / "metrics.csv").iloc[-1]
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "more", num_epochs=1,
                      init_lora=str(first / "final" / "lora"))
    more = train.run(cfg, progress=False)
    after = pd.read_csv(more / "metrics.csv")
    # epoch 0 of the new run is the first run's last epoch: the same adapter, eval seeds and prompts
    assert after.loc[0, "reward_mean"] == pytest.approx(before["reward_mean"], rel=1e-6)
    assert after.loc[0, "param_dist"] == pytest.approx(before["param_dist"], rel=1e-6) and before["param_dist"] > 0
    with np.load(first / "eval" / f"epoch_{int(before['epoch']):04d}.npz") as a, \
            np.load(more / "eval" / "epoch_0000.npz") as b:
        assert np.abs(a["images"].astype(int) - b["images"].astype(int)).max() <= 1
    assert after.loc[1, "param_dist"] != pytest.approx(after.loc[0, "param_dist"])  # and it trains on from there


def test_init_lora_refuses_what_it_cannot_start_from(tiny_model_dir, tiny_prompt_files, tmp_path):
    first = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "first", num_epochs=1),
                      progress=False)
    adapter = str(first / "final" / "lora")
    with pytest.raises(ConfigError, match="init_lora.*needs mode 'lora'"):
        tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "a", mode="full", init_lora=adapter)
    with pytest.raises(ConfigError, match="init_lora.*no such file"):
        tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "b", init_lora=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="has r 2, this run's adapter 4"):
        train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "c", lora_rank=4, init_lora=adapter),
                  progress=False)
