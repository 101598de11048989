"""The Stable Diffusion path on tiny random stand-ins: separate CLIP (224 px, OpenAI preprocessing),
LAION-format aesthetic file, a pipeline folder without toy extras; same loaders, rewards, metrics, loop."""

import numpy as np
import pandas as pd

from ddpo_study import train
from ddpo_study.models import OPENAI_CLIP_NORM, load_clip
from tests.test_train import tiny_config


def test_clip_at_224_px_uses_openai_preprocessing(tiny_sd_layout):
    _, clip_dir, _ = tiny_sd_layout
    scorer = load_clip(clip_dir)
    assert scorer.image_size == 224 and scorer.mean == OPENAI_CLIP_NORM["mean"]
    assert scorer.image_embeds(__import__("torch").rand(2, 3, 16, 16)).shape == (2, 12)


def test_one_sd_style_run_through_the_same_loop(tiny_sd_layout, tiny_prompt_files, tmp_path):
    sd_dir, clip_dir, aesthetic_file = tiny_sd_layout
    cfg = tiny_config(sd_dir, tiny_prompt_files, tmp_path / "sd-run", clip_model=str(clip_dir),
                      aesthetic_model=str(aesthetic_file), reward="aesthetic", diversity_lambda=0.5)
    out = train.run(cfg, progress=False)
    df = pd.read_csv(out / "metrics.csv")
    assert df["epoch"].tolist() == [0, 1, 2]
    assert np.isfinite(df["reward_mean"]).all() and "judge_all" not in df.columns  # not toy prompts
    assert df["train_similarity_mean"].iloc[1:].notna().all()  # the diversity penalty was applied
