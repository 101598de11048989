"""``ddpo_study.diagnose`` on SD3-type pipelines (a tiny ``StableDiffusion3Pipeline`` built from config): every
tuned-model form an SD3 trainer writes (a diffusers SD3 LoRA, flow_grpo's and DiffusionNFT's peft checkpoints with
any key prefix, a full transformer folder, our flow run folders) loads and reads with the UNet path's verdicts; the
ODE switch sampler; a flow run's saved evals reproduced; a form for the wrong model is one line."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpo_study import cli, diagnose, train
from ddpo_study.checkpoint import save_lora
from ddpo_study.diagnose.sampling import sample_flow, sample_switched_flow
from ddpo_study.finetune import apply_lora, effective_state_dict
from ddpo_study.models import ModelLoadError, load_pipeline
from tests.conftest import TINY_PROMPTS, make_tiny_pipe, tiny_config

pytestmark = pytest.mark.usefixtures("module_one_thread")
FAST = dict(num_prompts=4, num_seeds=2, num_steps=4, guidance_scale=2.0)
#: flow_grpo's and DiffusionNFT's LoRA targets on the SD3 transformer (scripts/train_sd3.py, train_nft_sd3.py).
FLOW_GRPO_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k",
                     "attn.to_out.0", "attn.to_q", "attn.to_v"]


@pytest.fixture(scope="module")
def base_pipe(tiny_sd3_model_dir):
    return load_pipeline(str(tiny_sd3_model_dir))


def randomise_lora_b(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def trained_lora(transformer, rank=2, alpha=4.0, seed=1):
    """A copy of ``transformer`` with our LoRA (rank 2, alpha 4: scale 2), B non-zero as after training."""
    tuned = copy.deepcopy(transformer)
    apply_lora(tuned, rank, alpha)
    return randomise_lora_b(tuned, seed).requires_grad_(False).eval()


def peft_checkpoint(transformer, folder, extra_adapter=False):
    """flow_grpo's ``save_ckpt``: ``get_peft_model(transformer, LoraConfig(...)).save_pretrained(checkpoint-N/lora)``
    (alpha 6 over rank 2 here); ``extra_adapter``: DiffusionNFT's, whose PeftModel also holds an ``old`` adapter
    (saved by ``save_pretrained`` in ``lora/old/``). Returns the tuned transformer (the default adapter active)."""
    from peft import LoraConfig, get_peft_model

    tuned = copy.deepcopy(transformer)
    config = LoraConfig(r=2, lora_alpha=6.0, init_lora_weights="gaussian", target_modules=FLOW_GRPO_TARGETS)
    model = get_peft_model(tuned, config)
    if extra_adapter:
        model.add_adapter("old", config)  # B = 0: the base model, were it loaded by mistake
        model.set_adapter("default")
    randomise_lora_b(model)
    if extra_adapter:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B.old" in name:
                    p.zero_()
    model.save_pretrained(folder)
    return tuned.requires_grad_(False).eval()


def assert_same_weights(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst


# ----------------------------------------------------------------------------------------------- the forms
def test_a_diffusers_sd3_lora_reads_as_stock_diffusers_loads_it_and_is_loaded(tmp_path, tiny_sd3_model_dir,
                                                                                base_pipe, prompt_file):
    tuned = trained_lora(base_pipe.transformer)
    save_lora(tuned, tmp_path / "lora")  # StableDiffusion3Pipeline.save_lora_weights' format: transformer.* keys
    file = tmp_path / "lora" / diagnose.LORA_FILES[0]
    assert all(k.startswith("transformer.") for k in load_file(str(file)))
    assert diagnose.inspect_tuned(tmp_path / "lora") == ("lora", file)
    loaded = diagnose.load_tuned(tmp_path / "lora", base_pipe.transformer)
    assert loaded.kind == "lora" and loaded.lora_on_base and loaded.lora_layers > 0
    assert_same_weights(effective_state_dict(loaded.denoiser), effective_state_dict(tuned))  # alpha 4 / r 2 kept

    dx = diagnose.prepare(str(tiny_sd3_model_dir), tmp_path / "lora", prompts=prompt_file, **FAST)
    assert dx.flow and dx.base_denoiser is dx.pipe.transformer and "Euler ODE, 4 steps" in diagnose.describe(dx)
    # the images are stock diffusers' with the adapter loaded by its own load_lora_weights
    stock = load_pipeline(str(tiny_sd3_model_dir))
    stock.load_lora_weights(str(tmp_path / "lora"))
    seeds = dx.seeds("shared")
    want = sample_flow(stock, None, [p for p in dx.prompts for _ in range(2)], seeds.reshape(-1), 4, 2.0)
    got = torch.from_numpy(dx.tuned_images("shared")).permute(0, 1, 4, 2, 3).reshape(want.shape).float() / 255
    assert (got - want).abs().max() <= 1 / 255 + 1e-6

    checks = diagnose.loading_checks(dx).set_index("check")
    assert checks.loc["layers carrying the LoRA", "ok"] and checks.loc[
        "weight distance from base (L2, effective weights)", "ok"]
    assert checks.loc["mean |tuned - base| at the same prompts and seeds (8-bit levels)", "ok"]
    assert checks.loc["LoRA scale 0 reproduces the base (max |diff|, 8-bit levels)", "value"] == 0
    sweep = diagnose.scale_sweep(dx, [0.0, 0.5, 1.0])
    assert (dx.images["scale/0"] == dx.images["base/shared"]).all() and sweep.notna().all().all()
    assert not (dx.images["scale/0.5"] == dx.images["tuned/shared"]).all()
    assert diagnose.verdict(diagnose.symptom(dx), diagnose.loading_checks(dx)).label != "adapter not applied"
    assert diagnose.reproduction_check(dx)["verdict"].iloc[0].startswith("not a run folder")


def test_an_untrained_sd3_lora_is_not_applied(tmp_path, tiny_sd3_model_dir, base_pipe, prompt_file):
    untrained = copy.deepcopy(base_pipe.transformer)
    apply_lora(untrained, 2, 2.0)  # B = 0, as training starts it
    save_lora(untrained, tmp_path / "checkpoint-0")
    dx = diagnose.prepare(str(tiny_sd3_model_dir), tmp_path / "checkpoint-0", prompts=prompt_file, **FAST)
    results = diagnose.run_all(dx, [0.0, 1.0])
    assert results.verdict.label == "adapter not applied" and str(results.verdict).startswith("tuned == base")
    assert results.scale.empty and results.switch.empty


@pytest.mark.parametrize("layout", ["flow_grpo", "transformer.base_model.model.", "base_model.model.transformer.",
                                    "transformer.", "adapter name in keys", "DiffusionNFT"])
def test_flow_grpo_and_diffusion_nft_peft_checkpoints_load_whatever_their_key_prefix(tmp_path, base_pipe, layout):
    """flow_grpo#87: peft's ``base_model.model.`` prefix, a ``transformer.`` one before or after it, or none but
    ``transformer.``, and the adapter's name inside the keys: all the same adapter."""
    ckpt = tmp_path / "checkpoint-7"
    tuned = peft_checkpoint(base_pipe.transformer, ckpt / "lora", extra_adapter=layout == "DiffusionNFT")
    file = ckpt / "lora" / "adapter_model.safetensors"
    if layout == "DiffusionNFT":
        assert (ckpt / "lora" / "old" / "adapter_model.safetensors").is_file()  # the second adapter: not read
    elif layout != "flow_grpo":
        state = load_file(str(file))
        assert all(k.startswith("base_model.model.transformer_blocks.") for k in state)
        bare = {k.removeprefix("base_model.model."): v for k, v in state.items()}
        renamed = {"adapter name in keys": {k.replace(".weight", ".default.weight"): v for k, v in state.items()}}
        state = renamed.get(layout) or {layout + k: v for k, v in bare.items()}
        save_file(state, str(file))
    assert diagnose.inspect_tuned(ckpt) == ("peft", file)
    loaded = diagnose.load_tuned(ckpt, base_pipe.transformer)
    assert loaded.kind == "peft" and loaded.lora_on_base and loaded.lora_layers > 0
    assert_same_weights(effective_state_dict(loaded.denoiser), effective_state_dict(tuned))


def test_a_full_transformer_folder_in_fp16_and_a_pipeline_folder(tmp_path, tiny_sd3_model_dir, base_pipe,
                                                                  prompt_file):
    tuned = copy.deepcopy(base_pipe.transformer)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tuned.half().save_pretrained(tmp_path / "ckpt" / "transformer")  # fp16 safetensors, as runs keep final/
    assert json.loads((tmp_path / "ckpt" / "transformer" / "config.json").read_text())["_class_name"] == \
        "SD3Transformer2DModel"
    assert diagnose.inspect_tuned(tmp_path / "ckpt") == ("transformer", tmp_path / "ckpt" / "transformer")
    loaded = diagnose.load_tuned(tmp_path / "ckpt", base_pipe.transformer)
    assert loaded.kind == "transformer" and next(loaded.denoiser.parameters()).dtype == torch.float32
    assert_same_weights(effective_state_dict(loaded.denoiser), effective_state_dict(tuned.float()), atol=0)
    assert "full SD3 transformer" in loaded.description

    dx = diagnose.prepare(str(tiny_sd3_model_dir), tmp_path / "ckpt", prompts=prompt_file, **FAST)
    diagnose.scale_sweep(dx, [0.0, 0.5])  # weight interpolation: 0 is the base exactly
    assert (dx.images["scale/0"] == dx.base("shared")).all()

    # the base pipeline folder given as "tuned" (hence its transformer/): identical, and said so
    same = diagnose.prepare(str(tiny_sd3_model_dir), tiny_sd3_model_dir, prompts=prompt_file, **FAST)
    assert same.tuned.kind == "transformer"
    found = diagnose.verdict(diagnose.symptom(same), diagnose.loading_checks(same))
    assert found.label == "adapter not applied" and str(found).startswith("tuned == base")


def test_a_text_blind_transformer_reads_as_collapsed(tmp_path, tiny_sd3_model_dir, base_pipe, prompt_file):
    """The transformer's text inputs zeroed (tokens and pooled embedding): every prompt gives the same image."""
    blind = copy.deepcopy(base_pipe.transformer)
    with torch.no_grad():
        blind.context_embedder.weight.zero_()
        blind.time_text_embed.text_embedder.linear_1.weight.zero_()
    blind.save_pretrained(tmp_path / "blind")
    dx = diagnose.prepare(str(tiny_sd3_model_dir), tmp_path / "blind", prompts=prompt_file, reward="jpeg_compressibility",
                          **FAST)
    found = diagnose.verdict(diagnose.symptom(dx), diagnose.loading_checks(dx))
    assert found.label == "loaded and collapsed" and "the prompts are ignored" in found.line, found.line
    tuned = dx.images["tuned/shared"]
    assert (tuned == tuned[:1]).all()  # the same image for every prompt at each seed


# ----------------------------------------------------------------------------------------------- the switch sweep
def test_the_ode_switch_sampler_reproduces_both_models_at_its_ends(base_pipe):
    tuned = trained_lora(base_pipe.transformer)
    prompts, seeds = TINY_PROMPTS[:3], [4, 5, 6]
    ref = {name: sample_flow(base_pipe, t, prompts, seeds, 4, 3.0, batch_size=2)
           for name, t in (("base", base_pipe.transformer), ("tuned", tuned))}
    own = base_pipe.transformer
    at = {k: diagnose.sample_switched(base_pipe, base_pipe.transformer, tuned, k, prompts, seeds,
                                      num_inference_steps=4, guidance_scale=3.0, batch_size=2) for k in (0, 2, 4)}
    assert base_pipe.transformer is own
    assert torch.equal(at[0], ref["tuned"]) and torch.equal(at[4], ref["base"])
    assert not torch.equal(at[2], ref["tuned"]) and not torch.equal(at[2], ref["base"])
    with pytest.raises(ValueError, match="switch_at"):
        sample_switched_flow(base_pipe, base_pipe.transformer, tuned, 5, prompts, seeds, 4, 3.0)


# ----------------------------------------------------------------------------------------------- our flow runs
@pytest.mark.parametrize("mode, kind", [("lora", "lora"), ("full", "transformer")])
def test_a_flow_run_folder_is_diagnosed_and_reproduces_its_saved_evals(tmp_path, tiny_sd3_model_dir,
                                                                       tiny_prompt_files, mode, kind):
    cfg = tiny_config(tiny_sd3_model_dir, tiny_prompt_files, tmp_path / "run", algorithm="flow_grpo", num_epochs=1,
                      num_steps=3, eval_num_steps=4, guidance_scale=2.0, lora_learning_rate=0.05,
                      reward="jpeg_compressibility", mode=mode)
    run = train.run(cfg, progress=False)
    dx = diagnose.prepare(None, run, num_prompts=3, num_seeds=2)  # the run's model, reward and eval sampling
    assert dx.flow and dx.num_steps == 4 and dx.guidance_scale == 2.0
    assert (dx.tuned.kind, dx.tuned.epoch) == (kind, 1) and (dx.tuned.lora_layers > 0) == (mode == "lora")
    check = diagnose.reproduction_check(dx).set_index("model")
    assert list(check["verdict"]) == ["match", "match"], check
    assert check.loc["tuned", "mean_abs_diff"] < (1e-9 if mode == "lora" else 0.1)  # full: an fp16 export
    results = diagnose.run_all(dx, [0.0, 1.0], [0, 2, 4])
    assert results.verdict.label in ("loaded and collapsed", "loaded, no collapse", "same noise for every prompt")
    assert list(results.switch["base_steps"]) == [0, 2, 4] and list(results.scale["scale"]) == [0.0, 1.0]
    assert (dx.images["switch/2"] != dx.images["tuned/shared"]).any()


# ----------------------------------------------------------------------------------------------- bad input
def test_a_form_for_the_wrong_model_is_one_line(tmp_path, tiny_sd3_model_dir, tiny_model_dir, base_pipe, capsys):
    sd_pipe = make_tiny_pipe(0)
    unet_lora = copy.deepcopy(sd_pipe.unet)
    apply_lora(unet_lora, 2, 2.0)
    save_lora(unet_lora, tmp_path / "unet-lora")
    save_lora(trained_lora(base_pipe.transformer), tmp_path / "sd3-lora")
    sd_pipe.unet.save_pretrained(tmp_path / "unet-folder")
    peft_checkpoint(base_pipe.transformer, tmp_path / "sd3-peft" / "lora")
    cases = [
        (tmp_path / "unet-lora", base_pipe.transformer, "is a LoRA for a UNet .* base model's denoiser is an "
                                                        "SD3 transformer: pass the base model"),
        (tmp_path / "sd3-lora", sd_pipe.unet, "is a LoRA for an SD3 transformer .* denoiser is a UNet"),
        (tmp_path / "unet-folder", base_pipe.transformer, "holds a full UNet2DConditionModel, but the base model's "
                                                          "denoiser is an SD3Transformer2DModel"),
        (tmp_path / "sd3-peft", sd_pipe.unet, "does not fit this UNet|match no LoRA layer of this UNet"),
    ]
    for tuned, base, words in cases:
        with pytest.raises(diagnose.TunedModelError, match=words) as err:
            diagnose.load_tuned(tuned, base)
        assert "\n" not in str(err.value)
    with pytest.raises(diagnose.TunedModelError, match="LoRA for a UNet"):
        diagnose.prepare(str(tiny_sd3_model_dir), tmp_path / "unet-lora", **FAST)

    broken = tmp_path / "not-sd3"  # an SD3 folder that is not one: refused before a kernel starts
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(ModelLoadError, match="SD3 pipeline folder .* lacks the component folder"):
        diagnose.prepare(str(broken), tmp_path / "sd3-lora", **FAST)
    capsys.readouterr()
    assert cli.main(["diagnose", str(tmp_path / "sd3-lora"), "--base", str(broken), "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "lacks the component folder" in lines[0]
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------------- end to end
def test_the_diagnose_command_on_an_sd3_lora(tmp_path, tiny_sd3_model_dir, base_pipe, prompt_file, capsys):
    save_lora(trained_lora(base_pipe.transformer), tmp_path / "lora")
    out = tmp_path / "report"
    rc = cli.main(["diagnose", str(tmp_path / "lora"), "--base", str(tiny_sd3_model_dir), "--prompts", prompt_file,
                   "--num-prompts", "3", "--num-seeds", "2", "--steps", "3", "--guidance", "2", "--scales", "0", "1",
                   "--switch-steps", "0", "1", "3", "--reward", "jpeg_compressibility", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    summary = json.loads((out / "diagnose.json").read_text())
    assert printed.startswith(f"verdict: {summary['verdict']}")
    assert summary["label"] in ("loaded and collapsed", "loaded, no collapse", "same noise for every prompt")
    assert [row["base_steps"] for row in summary["switch_sweep"]] == [0, 1, 3]
    assert np.isfinite([row["reward_mean"] for row in summary["scale_sweep"]]).all()
    html = (out / "diagnose.html").read_text()
    assert "Euler ODE" in html and summary["verdict"].split(":")[0] in html
