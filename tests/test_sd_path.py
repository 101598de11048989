"""The Stable Diffusion path on tiny random stand-ins: separate CLIP (224 px, OpenAI preprocessing),
LAION-format aesthetic file, a pipeline folder without toy extras; same loaders, rewards, metrics, loop."""

import numpy as np
import pandas as pd

from ddpo_study import train
from ddpo_study.models import OPENAI_CLIP_NORM, load_clip
from tests.conftest import tiny_config


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


def test_one_sd_style_grid_cell_through_the_notebook(tiny_sd_layout, tiny_prompt_files, tmp_path):
    """The SD grid's path: a spec -> papermill cell.ipynb -> report.html, with the SD loaders and rewards."""
    import yaml

    from ddpo_study import cli

    sd_dir, clip_dir, aesthetic_file = tiny_sd_layout
    values = tiny_config(sd_dir, tiny_prompt_files, tmp_path / "unused", num_epochs=1, clip_model=str(clip_dir),
                         aesthetic_model=str(aesthetic_file), reward="aesthetic").to_dict()
    spec = {"name": "tiny_sd", "notebook": "notebooks/cell.ipynb", "output_root": str(tmp_path / "results"),
            "cell_name": "{mode}-s{seed}", "fixed": {k: v for k, v in values.items() if k not in ("output_dir", "seed", "mode")},
            "axes": {"mode": ["lora"], "seed": [0]}}
    spec_file = tmp_path / "sd.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    assert cli.main(["grid", "run", str(spec_file), "--no-summary"]) == 0
    cell = tmp_path / "results" / "lora-s0"
    assert (cell / "report.html").is_file() and (cell / "DONE").is_file()
    assert (cell / "checkpoints" / "latest" / "lora" / "pytorch_lora_weights.safetensors").is_file()
