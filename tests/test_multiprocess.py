"""`accelerate launch --num_processes 2 --cpu` runs a tiny cell: two processes share each epoch's samples."""

import json
import subprocess
import sys

import pandas as pd
import yaml

from tests.test_train import tiny_config


def test_two_cpu_processes_sample_the_same_epoch_size_as_one(tiny_model_dir, tiny_prompt_files, tmp_path):
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "mp", num_epochs=2, eval_every=2)
    spec = tmp_path / "cell.yaml"
    spec.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "ddpo_study", "train", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(tmp_path / "mp" / "metrics.csv")
    assert df["epoch"].tolist() == [0, 1, 2]
    assert (df["train_samples"].iloc[1:] == cfg.samples_per_epoch).all()
    assert json.loads((tmp_path / "mp" / "DONE").read_text())["epochs"] == 2
    # each process trained on its half, with gradients averaged: the update moved the weights
    assert df["param_dist"].iloc[-1] > 0
