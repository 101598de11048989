"""The pretraining command at a tiny scale: it writes a genuine diffusers pipeline that loads offline and
answers the standard pipeline call, plus the CLIP and aesthetic scorer the rewards use."""

import json

import torch

from ddpo_study.models import load_aesthetic, load_clip
from ddpo_study.toy import pretrain


def test_pretrain_writes_a_stock_loadable_pipeline(tmp_path, one_thread):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out = tmp_path / "toy"
    report = pretrain.main(["--out", str(out), "--scale", "0.001", "--device", "cpu"])
    assert set(report["clip_zero_shot"]) == {"shape", "size", "position", "color", "bg"}
    index = json.loads((out / "model_index.json").read_text())
    assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    images = pipe(["a small red circle in the center on a blue background"] * 2, num_inference_steps=2,
                  guidance_scale=3.0, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 32, 32, 3)
    clip = load_clip(out / "clip")
    scores = load_aesthetic(out / "aesthetic")(clip.image_embeds(torch.rand(2, 3, 32, 32)))
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    saved = json.loads((out / "pretrain_report.json").read_text())
    assert (saved["device"], saved["scale"]) == ("cpu", 0.001)
    # --scale multiplies every stage's steps, floored at 2: here clip/unet are scaled (3), vae/aesthetic floored.
    assert saved["steps"] == {k: max(2, int(v * 0.001)) for k, v in pretrain.STEPS.items()}
    assert sorted(saved["steps"].values()) == [2, 2, 3, 3]
