"""``ddpo_study.monitor`` and ``monitor --watch`` on the tiny pipeline: the readings and the verdict that flips when a
LoRA makes every prompt give the same image; the watcher over a folder a "trainer" fills one checkpoint at a time
(our LoRA, a peft save_pretrained one, a truncated file, one still being written), its resume and ``--once``; the
same over an SD3-type base's checkpoints (a diffusers SD3 LoRA, flow_grpo's peft layout, a full transformer, a UNet
LoRA that does not fit)."""

from __future__ import annotations

import argparse
import copy
import csv

import numpy as np
import pytest
import torch

from ddpo_study import cli, watch
from ddpo_study.checkpoint import save_lora
from ddpo_study.finetune import apply_lora
from ddpo_study.models import load_clip, load_pipeline
from ddpo_study.monitor import Monitor, Reading
from tests.conftest import (
    TINY_PROMPTS,
    blind_sd3_to_text,
    make_tiny_pipe,
    sd3_text_blind_lora_config,
)

pytestmark = pytest.mark.usefixtures("module_one_thread")
PROMPTS = TINY_PROMPTS[:4]
FAST = dict(seeds=2, num_steps=4, guidance_scale=2.0)


@pytest.fixture(scope="module")
def base_pipe(tiny_model_dir):
    return load_pipeline(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tiny_clip(tiny_model_dir):
    return load_clip(tiny_model_dir / "clip")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return str(path)


def blind_to_text(unet):
    """Fill the rank-16 adapter on every cross-attention value projection with ``A = I``, ``B = -W``: the
    values become 0 whatever the prompt, so every prompt gives the same image at a seed (the #2113 collapse)."""
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn2.to_v") and hasattr(module, "lora_A"):
                module.lora_A["default"].weight.copy_(torch.eye(module.base_layer.in_features))
                module.lora_B["default"].weight.copy_(-module.base_layer.weight)
    return unet.eval().requires_grad_(False)


def collapsed_unet(unet):
    tuned = copy.deepcopy(unet)
    rank = tuned.config.cross_attention_dim
    apply_lora(tuned, rank, float(rank), target_modules=("attn2.to_v",), init_lora_weights=True)
    return blind_to_text(tuned)


def untrained_unet(unet):
    """A LoRA as training starts it (B = 0): the base model exactly."""
    tuned = copy.deepcopy(unet)
    apply_lora(tuned, 2, 2.0)
    return tuned.eval().requires_grad_(False)


def save_peft_collapsed(unet, folder):
    """flow_grpo's layout: ``get_peft_model(unet).save_pretrained(checkpoint-N/lora)``."""
    from peft import LoraConfig, get_peft_model

    tuned = copy.deepcopy(unet)
    rank = tuned.config.cross_attention_dim
    model = get_peft_model(tuned, LoraConfig(r=rank, lora_alpha=rank, target_modules=["attn2.to_v"]))
    blind_to_text(tuned)
    model.save_pretrained(folder)


# ------------------------------------------------------------------------------------------------- the API
def test_readings_and_the_verdict_flip_when_every_prompt_gives_the_same_image(base_pipe, tiny_clip):
    brightness = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731 - a user's reward, no info dict
    mon = Monitor(PROMPTS, tiny_clip, reward=brightness, **FAST)
    base = mon.set_reference(base_pipe)
    assert base.lost is None and base.images.shape[:2] == (4, 2)
    assert {"cross_div_clip", "retrieval_acc", "within_div_clip", "reward_mean"} <= set(base.metrics)
    assert base.summary().startswith("base: cross-prompt ")

    same = mon.measure(base_pipe, untrained_unet(base_pipe.unet), name="step-0")
    assert same.lost is False and same.diversity_ratio == 1.0 and same.retrieval_drop == 0.0
    assert same.metrics["dist_base_pixel"] == 0.0 and same.kind == "kept prompts"
    assert same.summary().startswith("step-0: prompts kept — cross-prompt 1.00 of base, retrieval ")

    lost = mon.measure(base_pipe, collapsed_unet(base_pipe.unet), name="step-9")
    assert lost.cross_prompt < 1e-9 < base.cross_prompt  # the same image for every prompt at each seed
    assert lost.lost is True and lost.diversity_ratio < 0.01
    assert lost.summary().startswith("step-9: prompts being lost — cross-prompt 0.00 of base, retrieval ")
    assert "; reward " in lost.summary() and np.isfinite(lost.reward)


def test_the_pipeline_call_path_gives_our_samplers_images(base_pipe, tiny_clip):
    """The path an SD3-type pipeline will take (its own __call__ with per-image generators) against our DDIM
    sampler, with a tuned UNet swapped in for the call and put back after."""
    tuned = collapsed_unet(base_pipe.unet)
    own = base_pipe.unet
    for denoiser in (None, tuned):
        ours = Monitor(PROMPTS, tiny_clip, sampler="ddim", **FAST).sample(base_pipe, denoiser)
        called = Monitor(PROMPTS, tiny_clip, sampler="pipeline", batch_size=3, **FAST).sample(base_pipe, denoiser)
        assert ours.shape == called.shape == (4, 2, 3, 16, 16)
        torch.testing.assert_close(called, ours, atol=1e-5, rtol=0)
    assert base_pipe.unet is own


# ------------------------------------------------------------------------------------------------- the watcher
def monitor_args(watched, out, tiny_model_dir, prompt_file, *extra):
    return ["monitor", "--watch", str(watched), "--base", str(tiny_model_dir), "--prompts", prompt_file,
            "--seeds", "2", "--steps", "4", "--guidance", "2", "--reward", "jpeg_compressibility", "--device", "cpu",
            "--out", str(out), "--settle", "0", *extra]


def read_rows(out):
    with open(out / watch.CSV_FILE, newline="") as f:
        return list(csv.DictReader(f))


def test_watch_once_rows_lines_unreadable_resume(tmp_path, tiny_model_dir, prompt_file, base_pipe, capsys,
                                                 monkeypatch):
    watched, out = tmp_path / "trainer", tmp_path / "monitor"
    save_lora(untrained_unet(base_pipe.unet), watched / "checkpoint-100")
    save_peft_collapsed(base_pipe.unet, watched / "checkpoint-200" / "lora")
    good = watched / "checkpoint-100" / "pytorch_lora_weights.safetensors"
    (watched / "checkpoint-300").mkdir()
    (watched / "checkpoint-300" / good.name).write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (watched / "logs").mkdir()  # not a checkpoint: ignored
    calls = []
    measure = Monitor.measure
    monkeypatch.setattr(Monitor, "measure", lambda self, *a, **k: calls.append(k.get("name")) or measure(self, *a, **k))

    assert cli.main(monitor_args(watched, out, tiny_model_dir, prompt_file, "--once")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("base: cross-prompt ")
    assert lines[1].startswith("checkpoint-100: prompts kept — cross-prompt 1.00 of base")
    assert lines[2].startswith("checkpoint-200: prompts being lost — cross-prompt 0.00 of base, retrieval ")
    assert lines[2].endswith("; last passing: checkpoint-100")
    assert lines[3].startswith("checkpoint-300: skipped, cannot read it — ") and "safetensors" in lines[3]
    assert lines[4].startswith("3 checkpoint(s) in ") and "1 kept, 1 lost, 1 unreadable" in lines[4]
    rows = read_rows(out)
    assert [(r["checkpoint"], r["step"], r["status"]) for r in rows] == [
        ("base", "0", "base"), ("checkpoint-100", "100", "kept"), ("checkpoint-200", "200", "lost"),
        ("checkpoint-300", "300", "unreadable")]
    assert rows[2]["weights"] == "checkpoint-200/lora/adapter_model.safetensors" and float(rows[2]["cross_div_ratio"]) < 0.01
    assert rows[3]["error"] and not rows[3]["cross_div_clip"]
    assert float(rows[0]["reward_mean"]) == pytest.approx(float(rows[1]["reward_mean"]))  # B = 0: the base exactly
    assert calls == ["base", "checkpoint-100", "checkpoint-200"]
    assert (out / "dashboard.png").stat().st_size > 1000 and 'src="dashboard.png"' in (out / "dashboard.html").read_text()

    # a restart reads the CSV and base.npz: nothing is sampled again, the unreadable one is not retried
    calls.clear()
    assert cli.main(monitor_args(watched, out, tiny_model_dir, prompt_file, "--once")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert calls == [] and lines[0].endswith("3 checkpoint(s) already read") and len(lines) == 2
    # a new checkpoint, whose number sorts before the others as text: only it is read, after them
    save_lora(untrained_unet(base_pipe.unet), watched / "checkpoint-1000")
    assert cli.main(monitor_args(watched, out, tiny_model_dir, prompt_file, "--once")) == 0
    assert calls == ["checkpoint-1000"] and "checkpoint-1000: prompts kept" in capsys.readouterr().out
    assert [r["checkpoint"] for r in read_rows(out)][-2:] == ["checkpoint-300", "checkpoint-1000"]

    # other settings would make rows that do not compare: refused with one line
    assert cli.main(monitor_args(watched, out, tiny_model_dir, prompt_file, "--once", "--num-prompts", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "made with other settings (prompts:" in err and "\n" not in err


def test_watch_waits_for_a_checkpoint_still_being_written(tmp_path, tiny_model_dir, prompt_file, base_pipe):
    """Files that change between the two looks are not read; the loop reads each new checkpoint once it settles."""
    watched, out = tmp_path / "trainer", tmp_path / "monitor"
    watched.mkdir()
    ap = argparse.ArgumentParser()
    watch.monitor_arguments(ap)
    args = ap.parse_args(monitor_args(watched, out, tiny_model_dir, prompt_file, "--settle", "0.5",
                                      "--interval", "7")[1:])  # without the subcommand's name
    lines, waits = [], []
    growing = watched / "checkpoint-5" / "optimizer.bin"

    def sleep(seconds):  # the test's clock: the "trainer" writes while the watcher waits
        waits.append(seconds)
        if seconds == 0.5 and len(waits) <= 2:
            with open(growing, "ab") as f:
                f.write(b"\0" * 64)
        elif seconds == 7:
            if (watched / "checkpoint-5" / "pytorch_lora_weights.safetensors").is_file() and \
                    not (watched / "checkpoint-6").exists():
                save_lora(collapsed_unet(base_pipe.unet), watched / "checkpoint-6")
            elif (watched / "checkpoint-6").exists():
                raise KeyboardInterrupt

    save_lora(untrained_unet(base_pipe.unet), watched / "checkpoint-5")
    growing.write_bytes(b"\0")
    watcher = watch.build_watcher(args, sleep=sleep, log=lines.append)
    watcher.start()
    assert watcher.poll() == 0 and lines[-1] == "checkpoint-5: still being written, not read yet"
    assert [r["checkpoint"] for r in watcher.rows] == ["base"]
    assert watcher.poll() == 0 and lines.count("checkpoint-5: still being written, not read yet") == 1
    with pytest.raises(KeyboardInterrupt):  # the watch loop: scan, wait --interval, scan...
        watcher.run(interval=7)
    assert [(r["checkpoint"], r["status"]) for r in read_rows(out)] == [
        ("base", "base"), ("checkpoint-5", "kept"), ("checkpoint-6", "lost")]
    assert lines[-1].startswith("checkpoint-6: prompts being lost") and lines[-1].endswith("last passing: checkpoint-5")
    assert waits.count(0.5) >= 4 and 7 in waits


def test_reading_saves_and_loads(tmp_path):
    reading = Reading("base", {"cross_div_clip": 0.5, "retrieval_acc": 1.0}, images=np.zeros((2, 1, 4, 4, 3), np.uint8),
                      rewards=np.ones((2, 1)))
    back = Reading.load(reading.save(tmp_path / "base.npz"))
    assert back.name == "base" and back.metrics == reading.metrics
    assert (back.images == reading.images).all() and (back.rewards == reading.rewards).all()


def test_watch_once_over_sd3_checkpoints(tmp_path, tiny_sd3_model_dir, prompt_file, capsys):
    """An SD3-type base (``pipe.transformer``): our SD3 LoRA, flow_grpo's ``checkpoint-N/lora`` (peft
    ``save_pretrained`` of the transformer, made text-blind), a full transformer folder, and a UNet's LoRA that
    cannot be this base's."""
    from peft import get_peft_model

    base = load_pipeline(str(tiny_sd3_model_dir))
    watched, out = tmp_path / "trainer", tmp_path / "monitor"
    untrained = copy.deepcopy(base.transformer)
    apply_lora(untrained, 2, 2.0)  # B = 0: the base exactly
    save_lora(untrained, watched / "checkpoint-100")
    transformer = copy.deepcopy(base.transformer)
    blind = get_peft_model(transformer, sd3_text_blind_lora_config(transformer))
    blind_sd3_to_text(blind).save_pretrained(watched / "checkpoint-200" / "lora")
    base.transformer.save_pretrained(watched / "checkpoint-300")  # full weights, here the base's own
    unet = make_tiny_pipe(0).unet
    apply_lora(unet, 2, 2.0)
    save_lora(unet, watched / "checkpoint-400")
    capsys.readouterr()

    assert cli.main(monitor_args(watched, out, tiny_sd3_model_dir, prompt_file, "--once")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("base: cross-prompt ")
    assert lines[1].startswith("checkpoint-100: prompts kept — cross-prompt 1.00 of base")
    assert lines[2].startswith("checkpoint-200: prompts being lost — cross-prompt 0.00 of base")
    assert lines[3].startswith("checkpoint-300: prompts kept — cross-prompt 1.00 of base")
    assert lines[4].startswith("checkpoint-400: skipped, cannot read it — ") and "LoRA for a UNet" in lines[4]
    rows = read_rows(out)
    assert [(r["checkpoint"], r["status"]) for r in rows] == [
        ("base", "base"), ("checkpoint-100", "kept"), ("checkpoint-200", "lost"), ("checkpoint-300", "kept"),
        ("checkpoint-400", "unreadable")]
    assert rows[2]["weights"] == "checkpoint-200/lora/adapter_model.safetensors"
    assert float(rows[1]["dist_base_pixel"]) == 0.0 == float(rows[3]["dist_base_pixel"])
