"""``ddpo_study.diagnose``: every tuned-model layout it reads, a run folder's weights (``final/``, else
``checkpoints/latest/``; none is an error naming what is missing, never the base model in disguise) and the
reproduction of its saved evals, the refusal of pickled objects, the combined sampler, the verdict's rules, and the
command end to end on a tiny pipeline (papermill + nbconvert, ~20 s)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ddpo_study import cli, diagnose
from ddpo_study.checkpoint import save_full_unet, save_lora
from ddpo_study.finetune import (
    ADAPTER_NAME,
    apply_lora,
    effective_state_dict,
    param_distance_from_base,
    snapshot_base_state,
)
from ddpo_study.models import load_pipeline
from ddpo_study.sampler import sample_trajectories
from tests.conftest import TINY_PROMPTS

pytestmark = pytest.mark.usefixtures("module_one_thread")
FAST = dict(num_prompts=4, num_seeds=2, num_steps=4)
UNPICKLED = []


def _record_unpickling():
    UNPICKLED.append(True)  # would run if the file were unpickled
    return "pwned"


class Payload:
    def __reduce__(self):
        return (_record_unpickling, ())


@pytest.fixture(scope="module")
def base_pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir))


def trained_lora(unet, rank=2, alpha=4.0, seed=1):
    """A copy of ``unet`` with a LoRA whose B is non-zero (as after training), rank 2 and alpha 4 (scale 2)."""
    tuned = copy.deepcopy(unet)
    apply_lora(tuned, rank, alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return tuned.requires_grad_(False).eval()


def assert_same_weights(a: dict, b: dict, atol=1e-6):
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= atol, worst


# ----------------------------------------------------------------------------------------------- layouts
def test_our_lora_is_read_with_its_alpha_and_diagnosed_as_loaded(tmp_path, tiny_model_dir, base_pipe, prompt_file):
    tuned = trained_lora(base_pipe.unet)
    save_lora(tuned, tmp_path / "lora")
    assert diagnose.inspect_tuned(tmp_path / "lora") == ("lora", tmp_path / "lora" / diagnose.LORA_FILES[0])
    loaded = diagnose.load_tuned(tmp_path / "lora", base_pipe.unet)
    assert loaded.kind == "lora" and loaded.lora_on_base and loaded.lora_layers > 0
    assert_same_weights(effective_state_dict(loaded.unet), effective_state_dict(tuned))  # alpha 4 / r 2 kept

    dx = diagnose.prepare(str(tiny_model_dir), tmp_path / "lora", prompts=prompt_file, **FAST)
    checks = diagnose.loading_checks(dx).set_index("check")
    dist = checks.loc["weight distance from base (L2, effective weights)"]
    assert dist["ok"] and dist["value"] == pytest.approx(
        param_distance_from_base(tuned, snapshot_base_state(base_pipe.unet)))
    assert checks.loc["LoRA scale 0 reproduces the base (max |diff|, 8-bit levels)", "value"] == 0
    assert checks.loc["mean |tuned - base| at the same prompts and seeds (8-bit levels)", "ok"]
    sweep = diagnose.scale_sweep(dx, [0.0, 1.0])
    assert (dx.images["scale/0"] == dx.images["base/shared"]).all()
    assert list(sweep["scale"]) == [0.0, 1.0] and sweep.notna().all().all()
    assert diagnose.fig_scale_images(dx, [0.0, 1.0]).axes  # the sweep's images, rows = scales
    assert diagnose.reproduction_check(dx)["verdict"].iloc[0].startswith("not a run folder")
    sym = diagnose.symptom(dx).set_index(["model", "seeds"])
    for seeds in diagnose.SEED_MODES.values():  # paired over the same images: the change of the two means
        assert sym.loc[("tuned", seeds), "reward_change"] == pytest.approx(
            sym.loc[("tuned", seeds), "reward_mean"] - sym.loc[("base", seeds), "reward_mean"], abs=1e-9)
        assert sym.loc[("base", seeds), "reward_change"] == 0
    assert diagnose.verdict(diagnose.symptom(dx), diagnose.loading_checks(dx)).label != "adapter not applied"


def test_trl_layouts_pipeline_folder_with_lora_file_and_bin_checkpoint(tmp_path, base_pipe):
    """TRL's save_pretrained: a whole pipeline plus pytorch_lora_weights.safetensors (no alpha metadata, r = alpha
    = 4) in one folder; its accelerate checkpoints with safe_serialization=False: the same as a .bin."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    tuned = trained_lora(base_pipe.unet, rank=4, alpha=4.0)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(tuned))
    base_pipe.save_pretrained(tmp_path / "trl")  # the pipeline next to the LoRA, as TRL writes it
    StableDiffusionPipeline.save_lora_weights(tmp_path / "trl", unet_lora_layers=layers)
    StableDiffusionPipeline.save_lora_weights(tmp_path / "ckpt", unet_lora_layers=layers, safe_serialization=False)
    for folder, name in (("trl", "pytorch_lora_weights.safetensors"), ("ckpt", "pytorch_lora_weights.bin")):
        assert diagnose.inspect_tuned(tmp_path / folder) == ("lora", tmp_path / folder / name)
        loaded = diagnose.load_tuned(tmp_path / folder, base_pipe.unet)
        assert_same_weights(effective_state_dict(loaded.unet), effective_state_dict(tuned))



def peft_saved_lora(unet, folder, rank=2, alpha=6.0, seed=3):
    """What flow_grpo and DiffusionNFT keep: ``get_peft_model(unet).save_pretrained(folder)``
    (``adapter_model.safetensors`` + ``adapter_config.json``), B non-zero; returns the tuned UNet."""
    from peft import LoraConfig, get_peft_model

    tuned = copy.deepcopy(unet)
    model = get_peft_model(tuned, LoraConfig(r=rank, lora_alpha=alpha, target_modules=["to_q", "to_k", "to_v"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.save_pretrained(folder)
    return tuned.requires_grad_(False).eval()


def test_peft_save_pretrained_layout_in_a_lora_subfolder(tmp_path, base_pipe):
    """flow_grpo's checkpoint-N/lora/: read with its saved alpha (6 over rank 2), found from the checkpoint folder;
    without its adapter_config.json, or truncated, one line naming the file."""
    tuned = peft_saved_lora(base_pipe.unet, tmp_path / "checkpoint-7" / "lora")
    file = tmp_path / "checkpoint-7" / "lora" / "adapter_model.safetensors"
    assert diagnose.inspect_tuned(tmp_path / "checkpoint-7") == ("peft", file)
    loaded = diagnose.load_tuned(tmp_path / "checkpoint-7", base_pipe.unet)
    assert loaded.kind == "peft" and loaded.lora_on_base and loaded.lora_layers > 0
    assert_same_weights(effective_state_dict(loaded.unet), effective_state_dict(tuned))

    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / file.name).write_bytes(file.read_bytes())
    with pytest.raises(diagnose.TunedModelError, match="adapter_config.json"):
        diagnose.inspect_tuned(tmp_path / "bare")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "adapter_config.json").write_text((file.parent / "adapter_config.json").read_text())
    (tmp_path / "cut" / file.name).write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(diagnose.TunedModelError, match="not a readable safetensors file") as err:
        diagnose.load_tuned(tmp_path / "cut", base_pipe.unet)
    assert "\n" not in str(err.value)

def ddpo_pytorch_state_dict(unet, rank=3, seed=2):
    """What ddpo-pytorch's ``unet.save_attn_procs`` writes with diffusers 0.17: for every attention processor
    ``<name>.processor``, ``LoRAAttnProcessor`` tensors ``to_{q,k,v,out}_lora.{down,up}.weight`` (down: (r, in),
    up: (out, r)), built here from the UNet's own attention modules; and the weights they amount to,
    ``W + up @ down`` (network alpha None: scale 1)."""
    g = torch.Generator().manual_seed(seed)
    state, expected = {}, {k: v.clone() for k, v in effective_state_dict(unet).items()}
    for proc in unet.attn_processors:
        block = proc[: -len(".processor")]
        attn = unet.get_submodule(block)
        for proj, layer, key in (("to_q", attn.to_q, "to_q"), ("to_k", attn.to_k, "to_k"),
                                 ("to_v", attn.to_v, "to_v"), ("to_out", attn.to_out[0], "to_out.0")):
            down = torch.randn(rank, layer.in_features, generator=g) * 0.3
            up = torch.randn(layer.out_features, rank, generator=g) * 0.3
            state[f"{proc}.{proj}_lora.down.weight"] = down
            state[f"{proc}.{proj}_lora.up.weight"] = up
            expected[f"{block}.{key}.weight"] = expected[f"{block}.{key}.weight"] + up @ down
    return state, expected


def test_ddpo_pytorch_attention_processor_checkpoint_becomes_the_same_peft_adapter(tmp_path, base_pipe):
    from safetensors.torch import save_file

    state, expected = ddpo_pytorch_state_dict(base_pipe.unet)
    (tmp_path / "checkpoint_3").mkdir()
    torch.save(state, tmp_path / "checkpoint_3" / "pytorch_lora_weights.bin")  # tensors only: weights_only reads it
    save_file(state, tmp_path / "attn_procs.safetensors")
    for tuned in (tmp_path / "checkpoint_3", tmp_path / "attn_procs.safetensors"):
        assert diagnose.inspect_tuned(tuned)[0] == "attn_procs"
        loaded = diagnose.load_tuned(tuned, base_pipe.unet)
        assert loaded.kind == "attn_procs" and loaded.lora_layers == len(state) // 2
        assert_same_weights(effective_state_dict(loaded.unet), expected, atol=1e-5)
    other = {k.replace("down_blocks", "side_blocks"): v for k, v in state.items()}
    torch.save(other, tmp_path / "other.bin")
    with pytest.raises(diagnose.TunedModelError, match="do not exist in this UNet.*another base model"):
        diagnose.load_tuned(tmp_path / "other.bin", base_pipe.unet)


def test_full_unet_folders_fp16_and_pipeline_layouts(tmp_path, tiny_model_dir, base_pipe, prompt_file, capfd):
    tuned = copy.deepcopy(base_pipe.unet)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tuned.half().save_pretrained(tmp_path / "run" / "unet")  # fp16 safetensors, as runs keep final/unet
    assert diagnose.inspect_tuned(tmp_path / "run") == ("unet", tmp_path / "run" / "unet")
    capfd.readouterr()
    loaded = diagnose.load_tuned(tmp_path / "run", base_pipe.unet)
    assert loaded.kind == "unet" and next(loaded.unet.parameters()).dtype == torch.float32
    assert capfd.readouterr().err == ""  # nothing for a report's stderr box (diffusers' dtype warning)
    assert_same_weights(effective_state_dict(loaded.unet), effective_state_dict(tuned.float()), atol=0)

    dx = diagnose.prepare(str(tiny_model_dir), tmp_path / "run", prompts=prompt_file, **FAST)
    sweep = diagnose.scale_sweep(dx, [0.0, 0.5])  # weight interpolation: 0 is the base exactly
    assert (dx.images["scale/0"] == dx.base("shared")).all() and len(sweep) == 2

    # the base model given as "tuned" (its pipeline folder, hence its unet/): identical, and said so
    same = diagnose.prepare(str(tiny_model_dir), tiny_model_dir, prompts=prompt_file, **FAST)
    results = diagnose.run_all(same, [0.0, 1.0], [0, 4])
    assert results.verdict.label == "adapter not applied" and str(results.verdict).startswith("tuned == base")


def test_a_progressive_run_folder_is_its_full_tuned_unet_with_the_lora_on_top(tmp_path, tiny_model_dir, base_pipe):

    full = copy.deepcopy(base_pipe.unet)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.02)
    tuned = trained_lora(full)
    run = tmp_path / "progressive-run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"mode": "progressive", "model": str(tiny_model_dir)}))
    (run / "metrics.csv").write_text("epoch\n0\n")
    (run / "DONE").write_text(json.dumps({"epochs": 6}))
    save_full_unet(tuned, run / "final" / "unet")  # the full-tuned base only, as export_final writes it
    save_lora(tuned, run / "final" / "lora")
    loaded = diagnose.load_tuned(run, base_pipe.unet)
    assert (loaded.kind, loaded.lora_on_base, loaded.epoch) == ("unet+lora", False, 6) and loaded.lora_layers > 0
    assert_same_weights(effective_state_dict(loaded.unet), effective_state_dict(tuned), atol=1e-6)


def make_run(root, model_dir, mode="lora", done_epochs: int | None = 3):
    """A run folder's files without training: config.json, metrics.csv and (finished) DONE."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"mode": mode, "model": str(model_dir), "num_steps": 3,
                                                  "guidance_scale": 2.0, "eta": 1.0, "eval_prompt_set": "toy_eval"}))
    (root / "metrics.csv").write_text("epoch\n0\n")
    if done_epochs is not None:
        (root / "DONE").write_text(json.dumps({"epochs": done_epochs}) + "\n")
    return root


@pytest.mark.parametrize("mode, missing", [
    ("lora", ["final/lora/pytorch_lora_weights.safetensors"]),
    ("full", ["final/{unet,transformer}/config.json"]),
    ("progressive", ["final/lora/pytorch_lora_weights.safetensors", "final/{unet,transformer}/config.json"]),
])
def test_a_run_folder_without_weights_is_an_error_naming_them(tmp_path, tiny_model_dir, base_pipe, mode, missing):
    from ddpo_study.rundir import MissingWeightsError

    run = make_run(tmp_path / "run", tiny_model_dir, mode)
    with pytest.raises(MissingWeightsError, match=f"finished {mode} run") as err:
        diagnose.load_tuned(run, base_pipe.unet)
    for name in missing:
        assert str(run / name) in str(err.value)
    unfinished = make_run(tmp_path / "unfinished", tiny_model_dir, mode, done_epochs=None)
    with pytest.raises(MissingWeightsError, match="has no checkpoint yet"):
        diagnose.load_tuned(unfinished, base_pipe.unet)


def test_a_run_folders_final_weights_are_loaded_and_its_checkpoint_is_the_fallback(tmp_path, tiny_model_dir,
                                                                                    base_pipe):
    run = make_run(tmp_path / "lora-run", tiny_model_dir, "lora", done_epochs=3)
    ckpt = run / "checkpoints" / "latest"
    save_lora(trained_lora(base_pipe.unet, seed=1), ckpt / "lora")
    (ckpt / "state.json").write_text(json.dumps({"epoch": 3}))
    loaded = diagnose.load_tuned(run, base_pipe.unet)  # no final/ yet: the run's latest checkpoint
    assert (loaded.kind, loaded.epoch, loaded.adapter) == ("lora", 3, ADAPTER_NAME)
    final = trained_lora(base_pipe.unet, seed=2)
    save_lora(final, run / "final" / "lora")
    assert_same_weights(effective_state_dict(diagnose.load_tuned(run, base_pipe.unet).unet),
                        effective_state_dict(final))

    full = make_run(tmp_path / "full-run", tiny_model_dir, "full", done_epochs=2)
    moved = copy.deepcopy(base_pipe.unet)
    with torch.no_grad():
        next(moved.parameters()).add_(1.0)
    save_full_unet(moved, full / "final" / "unet", dtype=torch.float16)  # as runs keep it
    loaded = diagnose.load_tuned(full, base_pipe.unet)
    assert loaded.adapter is None and loaded.epoch == 2
    assert next(loaded.unet.parameters()).dtype == torch.float32  # fp16 file, computed in the base's dtype
    assert not torch.equal(next(loaded.unet.parameters()), next(base_pipe.unet.parameters()))


def test_pickled_objects_are_refused_with_one_line_and_never_run(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    torch.save({"unet.down_blocks.0.lora.down.weight": torch.zeros(2, 2), "config": Payload()},
               tmp_path / "bad" / "pytorch_lora_weights.bin")
    with pytest.raises(diagnose.TunedModelError, match="holds pickled Python objects.*refusing to unpickle") as err:
        diagnose.inspect_tuned(tmp_path / "bad")
    assert "\n" not in str(err.value) and not UNPICKLED
    assert cli.main(["diagnose", str(tmp_path / "bad"), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refusing to unpickle" in lines[0]
    assert not UNPICKLED and not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(diagnose.TunedModelError, match="holds no tuned weights"):
        diagnose.inspect_tuned(tmp_path / "empty")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "plain.bin")
    with pytest.raises(diagnose.TunedModelError, match="holds no LoRA tensors"):
        diagnose.inspect_tuned(tmp_path / "plain.bin")


# ----------------------------------------------------------------------------------------------- sampling
def test_switched_sampler_reproduces_both_models_at_its_ends(base_pipe):
    tuned = trained_lora(base_pipe.unet)
    prompts, seeds = TINY_PROMPTS[:3], [4, 5, 6]
    kw = dict(num_inference_steps=4, guidance_scale=3.0, eta=1.0)
    ref = {name: sample_trajectories(base_pipe, prompts, seeds, unet=u, **kw).images.cpu()
           for name, u in (("base", base_pipe.unet), ("tuned", tuned))}
    at = {k: diagnose.sample_switched(base_pipe, base_pipe.unet, tuned, k, prompts, seeds, **kw)
          for k in (0, 2, 4)}
    assert torch.equal(at[0], ref["tuned"]) and torch.equal(at[4], ref["base"])
    assert not torch.equal(at[2], ref["tuned"]) and not torch.equal(at[2], ref["base"])
    with pytest.raises(ValueError, match="switch_at"):
        diagnose.sample_switched(base_pipe, base_pipe.unet, tuned, 5, prompts, seeds, **kw)


# ----------------------------------------------------------------------------------------------- verdict rules
def tables(base_same=1.0, tuned_same=1.0, base_diff=1.0, tuned_diff=1.0, base_ret=1.0, tuned_ret=1.0,
           dist=3.0, levels=20.0, layers=8, scale0=0.0, chance=1 / 16, reward_change=0.0, reward_z=float("nan")):
    rows = []
    for seeds, b, t in (("shared", base_same, tuned_same), ("per_prompt", base_diff, tuned_diff)):
        for model, d, r in (("base", b, base_ret), ("tuned", t, tuned_ret if seeds == "shared" else 1.0)):
            change, z = (reward_change, reward_z) if model == "tuned" else (0.0, float("nan"))
            rows.append({"model": model, "seeds": diagnose.SEED_MODES[seeds], "cross_div_clip": d,
                         "retrieval_acc": r, "retrieval_chance": chance, "cross_div_vs_base": d / b,
                         "reward_mean": 5.0 + change, "reward_change": change, "reward_change_z": z})
    checks = pd.DataFrame([
        {"check": "layers carrying the LoRA", "value": layers, "ok": layers > 0},
        {"check": "weight distance from base (L2, effective weights)", "value": dist, "ok": dist > 0},
        {"check": "mean |tuned - base| at the same prompts and seeds (8-bit levels)", "value": levels,
         "ok": levels > diagnose.SAME_OUTPUT_LEVELS},
        {"check": "LoRA scale 0 reproduces the base (max |diff|, 8-bit levels)", "value": scale0, "ok": scale0 == 0},
    ])
    return pd.DataFrame(rows), checks


@pytest.mark.parametrize("kwargs, label, words", [
    (dict(layers=0), "adapter not applied", "0 layers"),
    (dict(dist=0.0, levels=0.0), "adapter not applied", "tuned == base"),
    (dict(levels=0.1), "adapter not applied", "outputs equal base"),
    (dict(tuned_same=0.41, tuned_diff=0.97, tuned_ret=0.08), "loaded and collapsed",
     "0.41 of base at the same seed, 0.97 with per-prompt seeds.*the prompts are ignored.*follow the noise"),
    (dict(tuned_ret=0.8), "loaded and collapsed", r"retrieval 1.00 -> 0.80 \(chance 0.06\)$"),
    (dict(tuned_ret=0.8, reward_change=0.9, reward_z=3.0), "loaded and collapsed",
     r"reward 5.00 -> 5.90 \(change \+0.90, z 3.0 clustered by prompt\): the collapse came with a higher reward$"),
    (dict(tuned_ret=0.8, reward_change=-1.5, reward_z=-8.0), "loaded and collapsed",
     "reward 5.00 -> 3.50 .*z -8.0.*: the reward fell, so the model broke rather than maximised the reward$"),
    (dict(tuned_ret=0.8, reward_change=0.1, reward_z=1.9), "loaded and collapsed", "no reward change detected$"),
    (dict(tuned_same=0.97, reward_change=0.9, reward_z=3.0), "loaded, no collapse", "0.97 of base[^:]*$"),
    (dict(base_same=0.5, tuned_same=0.5), "same noise for every prompt", "0.50 of their diversity"),
    (dict(tuned_same=0.97), "loaded, no collapse", "0.97 of base"),
])
def test_verdict_rules(kwargs, label, words):
    v = diagnose.verdict(*tables(**kwargs))
    assert v.label == label
    assert re.search(words, v.line), v.line


def test_verdict_warns_when_scale_zero_is_not_the_base():
    v = diagnose.verdict(*tables(scale0=12.0))
    assert v.label == "loaded, no collapse" and "not the base model given" in str(v)


# ----------------------------------------------------------------------------------------------- end to end
def test_diagnose_command_writes_one_code_free_html_report(tmp_path, tiny_model_dir, base_pipe, prompt_file, capsys):
    save_lora(trained_lora(base_pipe.unet), tmp_path / "lora")
    out = tmp_path / "report"
    rc = cli.main(["diagnose", str(tmp_path / "lora"), "--base", str(tiny_model_dir), "--prompts", prompt_file,
                   "--num-prompts", "3", "--num-seeds", "2", "--steps", "3", "--scales", "0", "1",
                   "--switch-steps", "0", "1", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    summary = json.loads((out / "diagnose.json").read_text())
    assert printed.startswith(f"verdict: {summary['verdict']}")
    assert summary["label"] in ("loaded and collapsed", "loaded, no collapse", "same noise for every prompt")
    assert [row["base_steps"] for row in summary["switch_sweep"]] == [0, 1, 3]
    html = (out / "diagnose.html").read_text()
    assert summary["verdict"].split(":")[0] in html and "<img" in html
    assert "diagnose.prepare(" not in html  # code hidden
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html  # no progress bars / warnings boxes
    assert "report-style-" not in html  # one self-contained page (the theme CSS inline)
    assert np.isfinite([row["reward_mean"] for row in summary["scale_sweep"]]).all()
    assert all(np.isfinite(row["reward_change"]) for row in summary["symptom"])
    for seeds in diagnose.SEED_MODES:  # the image grids also as files, for a README or an issue
        assert (out / f"images_{seeds}.png").read_bytes().startswith(b"\x89PNG")


COMMITTED = Path(__file__).resolve().parents[1] / "results" / "toy_study" / "toy_30-lora-lam0.0-s0"


@pytest.mark.skipif(not (COMMITTED / "final" / "lora" / diagnose.LORA_FILES[0]).is_file(),
                    reason="the committed study cell keeps no final/lora adapter yet")
def test_a_committed_lora_cell_is_diagnosed_as_loaded_and_reproduces_its_saved_eval_images():
    """The notebook's default: a fresh clone's committed LoRA cell, its final epoch, images as evaluated."""
    dx = diagnose.prepare(None, COMMITTED, num_prompts=4, num_seeds=2)  # the run's model, reward and sampling
    assert dx.tuned.kind == "lora" and dx.num_steps == json.loads((COMMITTED / "config.json").read_text())["num_steps"]
    assert dx.tuned.epoch == json.loads((COMMITTED / "DONE").read_text())["epochs"]
    found = diagnose.verdict(diagnose.symptom(dx), diagnose.loading_checks(dx))
    assert found.label in ("loaded and collapsed", "loaded, no collapse") and not found.warnings, str(found)
    check = diagnose.reproduction_check(dx, max_prompts=2).set_index("model")
    assert list(check["verdict"]) == ["match", "match"], check


@pytest.mark.skipif(not (COMMITTED / "final" / "lora" / diagnose.LORA_FILES[0]).is_file(),
                    reason="the committed study cell keeps no final/lora adapter yet")
def test_a_cell_committed_without_eval_images_says_so(tmp_path):
    """A grid commits eval images for some cells only (keep_eval): the check says why there is nothing to compare."""
    import shutil

    cell_dir = tmp_path / COMMITTED.name
    cell_dir.mkdir()
    for name in ("config.json", "metrics.csv", "DONE"):
        shutil.copy(COMMITTED / name, cell_dir / name)
    shutil.copytree(COMMITTED / "final" / "lora", cell_dir / "final" / "lora")
    check = diagnose.reproduction_check(diagnose.prepare(None, cell_dir, num_prompts=2, num_seeds=1))
    assert len(check) == 1 and "keep_eval" in check["verdict"].iloc[0]


# ================================================================================================ remedies
REMEDY_SPEC = dict(name="r", grid="configs/toy_study.yaml", where={"mode": "lora"}, scales=[0.5], switch_steps=[2],
                   primary=[{"remedy": "scale", "value": 0.5}], metrics=["cross_div_clip"], output="unused")


@pytest.mark.parametrize("change, words", [
    ({"scale": [0.5]}, "unknown remedy spec key"),
    ({"scales": [1.0]}, "strictly between 0 and 1"),
    ({"switch_steps": [0]}, "switch_steps must be > 0"),
    ({"primary": [{"remedy": "stop", "value": 1}]}, "each primary point"),
    ({"metrics": []}, "at least one metric"),
    ({"primary": [{"remedy": "scale", "value": 0.6}]}, "not among the swept values"),
])
def test_a_bad_remedy_spec_is_one_line_naming_the_key(change, words):
    from ddpo_study.diagnose.remedy_sweep import RemedySpec, RemedySpecError

    with pytest.raises(RemedySpecError, match=words):
        RemedySpec.from_dict({**REMEDY_SPEC, **change})
    missing = dict(REMEDY_SPEC)
    del missing["output"]
    with pytest.raises(RemedySpecError, match="missing"):
        RemedySpec.from_dict(missing)


def test_remedy_sweep_reproduces_the_runs_own_evals_and_resumes(tmp_path, tiny_model_dir, tiny_prompt_files,
                                                                 monkeypatch):
    from ddpo_study import train
    from ddpo_study.diagnose import remedy_sweep as remedies
    from tests.conftest import tiny_config

    run = train.run(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "cell", num_epochs=2,
                                lora_learning_rate=0.05), progress=False)
    spec = remedies.RemedySpec.from_dict({**REMEDY_SPEC, "output": str(tmp_path / "out")})
    rows = remedies.sweep_run(run, spec)
    assert sorted(zip(rows["remedy"], rows["value"])) == [("scale", 0.0), ("scale", 0.5), ("scale", 1.0),
                                                          ("switch", 2.0)]
    # scale 1 is the final weights and scale 0 the base, sampled at the run's eval prompts and seeds: its own evals
    assert abs(rows["check_final_reward_diff"].iloc[0]) < 1e-4 and abs(rows["check_base_reward_diff"].iloc[0]) < 1e-4
    metrics = pd.read_csv(run / "metrics.csv").dropna(subset=["reward_mean"])
    assert metrics["reward_mean"].iloc[-1] != pytest.approx(metrics["reward_mean"].iloc[0], abs=1e-4)  # it moved
    with pytest.raises(remedies.RemedySpecError, match="not below"):
        remedies.sweep_run(run, remedies.RemedySpec.from_dict({**REMEDY_SPEC, "switch_steps": [4], "output": "x"}))

    calls = []
    monkeypatch.setattr(remedies, "selected_runs", lambda s: [run])
    stale = rows[rows["value"] != 2.0]  # swept before switch step 2 was in the spec: swept again, rows replaced
    (tmp_path / "out").mkdir()
    stale.assign(reward_mean=-1.0).to_csv(tmp_path / "out" / remedies.POINTS_FILE, index=False)
    monkeypatch.setattr(remedies, "sweep_run", lambda r, s, device="auto": calls.append(r) or rows)
    path = remedies.run_remedies(spec, log=lambda msg: None)
    remedies.run_remedies(spec, log=lambda msg: None)  # resumes: the run is in points.csv, not swept again
    table = pd.read_csv(path)
    assert calls == [run] and len(table) == len(rows) and (table["reward_mean"] > -1).all()


def test_remedies_select_one_finished_run_per_seed(tmp_path):
    import yaml

    from ddpo_study.diagnose import remedy_sweep as remedies

    root = tmp_path / "results"
    for name, seed, mode, done in (("a", 0, "lora", True), ("b", 1, "lora", True), ("c", 0, "full", True),
                                   ("d", 2, "lora", False)):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text(json.dumps({"seed": seed, "mode": mode}))
        (root / name / "metrics.csv").write_text("epoch\n0\n")
        if done:
            (root / name / "DONE").write_text("{}")
    spec_file = tmp_path / "grid.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "g", "notebook": "notebooks/cell.ipynb", "output_root": str(root),
                                         "fixed": {"model": "toy"}, "axes": {"seed": [0, 1]}}))
    spec = remedies.RemedySpec.from_dict({**REMEDY_SPEC, "grid": str(spec_file)})
    assert [p.name for p in remedies.selected_runs(spec)] == ["a", "b"]  # unfinished d and full c left out
    loose = remedies.RemedySpec.from_dict({**REMEDY_SPEC, "grid": str(spec_file), "where": {}})
    with pytest.raises(remedies.RemedySpecError, match="several runs of one seed"):
        remedies.selected_runs(loose)
    typo = remedies.RemedySpec.from_dict({**REMEDY_SPEC, "grid": str(spec_file), "where": {"modee": "lora"}})
    with pytest.raises(remedies.RemedySpecError, match="'modee' is not a config key"):
        remedies.selected_runs(typo)
