"""The flow toy's pretraining at a tiny scale: it writes a folder stock ``StableDiffusion3Pipeline.from_pretrained``
loads and samples from, a killed run resumes to the same weights, and the training convention is the scheduler's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ddpo_study import sd3_padding
from ddpo_study.toy import evaluate, flow_model, pretrain_flow

PROMPT = "a small red circle in the center on a blue background"
TINY = ["--layers", "1", "--heads", "1", "--batch", "4", "--steps", "5", "--ckpt-every", "2", "--no-eval",
        "--threads", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, module_one_thread):
    """An uninterrupted tiny run and the same run killed after step 3 (checkpoint at 2), then resumed.

    A one-step warm-up makes the rate 1e-3 from the start, so a resume that got anything wrong moves the weights
    visibly; every step's loss is logged."""
    root = tmp_path_factory.mktemp("flow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain_flow, "WARMUP", 1)
        mp.setattr(pretrain_flow, "LOG_EVERY", 1)
        whole = pretrain_flow.main(TINY + ["--out", str(root / "whole")])
        killed = pretrain_flow.main(TINY + ["--out", str(root / "resumed"), "--stop-after", "3"])
        ckpt_step = json.loads((root / "resumed-ckpt" / "latest" / "state.json").read_text())["step"]
        with pytest.raises(SystemExit, match="is from another run") as other:
            pretrain_flow.main(TINY + ["--out", str(root / "resumed"), "--batch", "3"])
        resumed = pretrain_flow.main(TINY + ["--out", str(root / "resumed")])
    return dict(root=root, whole=whole, killed=killed, ckpt_step=ckpt_step, other=str(other.value), resumed=resumed)


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_writes_a_folder_that_stock_sd3_loads_and_samples(runs):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    out = runs["root"] / "whole"
    pipe = StableDiffusion3Pipeline.from_pretrained(out, text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert isinstance(pipe.transformer, SD3Transformer2DModel) and pipe.transformer.dtype == torch.float32
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert all(isinstance(e, CLIPTextModelWithProjection) for e in (pipe.text_encoder, pipe.text_encoder_2))
    assert pipe.vae.config.shift_factor == pytest.approx(runs["whole"]["vae_shift_factor"])
    assert pipe.vae.config.scaling_factor == pytest.approx(runs["whole"]["vae_scaling_factor"])
    images = pipe([PROMPT] * 2, num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    assert images.shape == (2, 32, 32, 3)
    weights = _tensors(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}  # the EMA, half size on disk
    assert (out / "clip" / "model.safetensors").is_file() and (out / "aesthetic" / "model.safetensors").is_file()
    # what the UNet toy already ships, and SD3's second CLIP slot, are relative links, not copies
    base = pretrain_flow.parse_args([]).base
    for part in ("clip/model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (out / part).is_symlink() and (out / part).resolve() == (Path(base) / part).resolve()
    second = out / "text_encoder_2" / "model.safetensors"
    assert second.is_symlink() and second.resolve() == (out / "text_encoder" / "model.safetensors").resolve()
    assert not (out / "transformer" / "diffusion_pytorch_model.safetensors").is_symlink()
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["steps"] == 5 and report["transformer"]["num_layers"] == 1
    assert report["bytes_on_disk"] < 8e6 and not (runs["root"] / "whole-ckpt").exists()
    assert len((out / "pretrain_log.txt").read_text().splitlines()) == 5


def test_killed_run_resumes_to_the_uninterrupted_weights(runs):
    root = runs["root"]
    assert runs["killed"] == {"stopped_at": 3} and runs["ckpt_step"] == 2
    assert runs["resumed"]["resumed_at_steps"] == [2] and runs["whole"]["resumed_at_steps"] == []
    name = "transformer/diffusion_pytorch_model.safetensors"
    whole, resumed = _tensors(root / "whole" / name), _tensors(root / "resumed" / name)
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    # proj_out starts at zero (adaLN-zero): the weights compared are trained ones, not two equal inits
    assert any(v.abs().max() > 0 for k, v in whole.items() if k.startswith("proj_out"))
    losses = [[line.split("loss ")[1].split()[0] for line in (root / d / "pretrain_log.txt").read_text().splitlines()]
              for d in ("whole", "resumed")]
    assert losses[0] == losses[1] and len(set(losses[0])) == 5
    assert "--batch" not in runs["other"] and "batch 4" in runs["other"]  # one line naming the difference


def test_bad_base_gets_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"is not the UNet toy .* lacks \['text_encoder'"):
        pretrain_flow.main(["--base", str(tmp_path), "--out", str(tmp_path / "o")])


def test_rectified_flow_convention_is_the_schedulers():
    """x_t = (1 - sigma) x0 + sigma noise is ``scale_noise``; timestep = 1000 sigma; an Euler step of the velocity
    target from sigma lands on the straight path at the next sigma."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    for i in (0, 7, 19):
        scheduler = flow_model.make_scheduler()
        scheduler.set_timesteps(20)
        t, sigma, sigma_next = scheduler.timesteps[i], scheduler.sigmas[i], scheduler.sigmas[i + 1]
        assert float(t) == pytest.approx(float(sigma) * flow_model.NUM_TRAIN_TIMESTEPS)
        x_t = flow_model.noisy_latents(x0, noise, sigma.expand(3))
        torch.testing.assert_close(scheduler.scale_noise(x0, t.expand(3), noise), x_t)
        prev = scheduler.step(flow_model.velocity_target(x0, noise), t, x_t).prev_sample
        torch.testing.assert_close(prev, flow_model.noisy_latents(x0, noise, sigma_next.expand(3)), atol=1e-5, rtol=0)
    sigmas = flow_model.logit_normal_sigmas(4000, g)
    assert 0 < sigmas.min() and sigmas.max() < 1 and abs(float(torch.logit(sigmas).mean())) < 0.1


def test_collapsed_t5_padding_equals_the_stock_context(runs, one_thread):
    """One zero token weighted 256 in attention gives what the stock call's 256 zero tokens give."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(runs["root"] / "whole", text_encoder_3=None, tokenizer_3=None,
                                                    local_files_only=True)
    torch.manual_seed(0)
    transformer = flow_model.make_transformer(2, 2, 128, 128)
    with torch.no_grad():  # leave adaLN-zero: every layer and the attention must matter
        for p in transformer.parameters():
            p.normal_(0, 0.3)
    embeds, _, pooled, _ = pipe.encode_prompt([PROMPT, ""], None, None, do_classifier_free_guidance=False)
    stock_context = embeds, pooled
    short_context = flow_model.encode_prompts(pipe, [PROMPT, ""])
    assert stock_context[0].shape[1] == 16 + sd3_padding.T5_PAD_TOKENS and short_context[0].shape[1] == 17
    # float64: the comparison is of the maths, not of float32 sums over 256 terms against one
    transformer.double()
    stock_context = [t.double() for t in stock_context]
    short_context = [t.double() for t in short_context]
    latents, timestep = torch.randn(2, 4, 16, 16, dtype=torch.float64), torch.tensor([900.0, 300.0])
    with torch.no_grad():
        stock = transformer(latents, *stock_context, timestep).sample
        collapsed = sd3_padding.use_collapsed_t5_padding(transformer)(latents, *short_context, timestep).sample
        transformer.set_attn_processor(sd3_padding.CollapsedPadJointAttnProcessor(1))
        unweighted = transformer(latents, *short_context, timestep).sample
    torch.testing.assert_close(collapsed, stock, atol=1e-9, rtol=1e-9)
    assert (unweighted - stock).abs().max() > 1e-2  # the weight is what makes them equal


def test_base_eval_samples_the_stock_sd3_pipeline(runs, one_thread):
    pipe = evaluate.load_eval_pipeline(str(runs["root"] / "whole"))
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and not evaluate.takes_eta(pipe)
    images = evaluate.sample_pipe(pipe, [PROMPT], [3, 5], guidance=5.0, steps=2)
    assert images.shape == (1, 2, 3, 32, 32)
    one = evaluate.sample_pipe(pipe, [PROMPT], [5], guidance=5.0, steps=2, batch=1)
    torch.testing.assert_close(images[:, 1], one[:, 0], atol=1e-5, rtol=0)
    report = evaluate.evaluate(pipe, [PROMPT], [1.0], n_seeds=2, steps=2)
    assert report["eta"] is None and set(report["by_guidance"]) == {"1.0"}
