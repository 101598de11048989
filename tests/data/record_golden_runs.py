"""Record the golden ``metrics.csv`` files that ``tests/test_train_golden.py`` compares against.

Run once, from the repository root, on the code whose behaviour the test pins (it was run before the house
refactor of issue #41): ``.venv/bin/python tests/data/record_golden_runs.py``. Re-recording is a behaviour
change and needs a reason in its commit message.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.conftest import TINY_PROMPTS, make_tiny_model_dir, tiny_config  # noqa: E402
from tests.test_train_golden import GOLDEN_RUNS, golden_metrics  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = make_tiny_model_dir(tmp / "model")
        train, evals = tmp / "train.txt", tmp / "eval.txt"
        train.write_text("\n".join(TINY_PROMPTS[:4]) + "\n")
        evals.write_text("\n".join(TINY_PROMPTS[2:]) + "\n")
        for name, overrides in GOLDEN_RUNS.items():
            cfg = tiny_config(model, (str(train), str(evals)), tmp / name, **overrides)
            df: pd.DataFrame = golden_metrics(cfg)
            df.to_csv(HERE / f"golden_{name}.csv", index=False, float_format="%.17g")
            print(name, df.shape)


if __name__ == "__main__":
    main()
