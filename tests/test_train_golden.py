"""Behaviour pinned across refactors: a 3-epoch LoRA run and a 3-epoch progressive run on the tiny model give
the ``metrics.csv`` recorded before the house refactor (issue #41), every column but the timings.

The recorded files are ``tests/data/golden_*.csv`` (``tests/data/record_golden_runs.py`` wrote them). The
runs exercise the step controller, the KL penalty to the base model, per-prompt groups, the phase switch and a
diversity penalty, so a change to any of sampling, rewards, advantages, the PPO update, the controller or the
eval shows up as a changed number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_config

DATA = Path(__file__).parent / "data"

#: The pinned runs: overrides of ``tiny_config``.
GOLDEN_RUNS = {
    "lora": dict(mode="lora", num_epochs=3, target_kl=0.002, kl_beta=0.01),
    "progressive": dict(mode="progressive", num_epochs=3, progressive_switch_epoch=2, target_kl=0.002,
                        diversity_lambda=1.0, diversity_form="cross_prompt", diversity_feature="clip"),
}


def golden_metrics(cfg) -> pd.DataFrame:
    """Train ``cfg`` and return its ``metrics.csv`` without the timing columns (they measure the machine)."""
    from ddpo_study import train

    out = train.run(cfg, progress=False)
    df = pd.read_csv(Path(out) / "metrics.csv")
    return df.drop(columns=[c for c in df.columns if c.startswith("time_") or c == "cpu_epoch_s"])


@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_training_matches_the_recorded_runs(name, tiny_model_dir, tiny_prompt_files, tmp_path):
    want = pd.read_csv(DATA / f"golden_{name}.csv")
    got = golden_metrics(tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / name, **GOLDEN_RUNS[name]))
    assert list(got.columns) == list(want.columns)
    for col in want.columns:
        if want[col].dtype.kind in "fi":
            # equal up to float round-off of another CPU's kernels (the numbers are O(1e-3..10))
            np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-5, atol=1e-8,
                                       equal_nan=True, err_msg=f"{name}: column {col}")
        else:
            assert got[col].tolist() == want[col].tolist(), f"{name}: column {col}"
