from __future__ import annotations

import pytest

from tests.report.fakes import fake_cell


@pytest.fixture(scope="package")
def fake_grid(tmp_path_factory):
    """36 finished runs: {toy_30, toy_300} x {lora, full, progressive} x lambda {0, 0.5} x seeds {0, 1, 2}."""
    root = tmp_path_factory.mktemp("fake-grid")
    for seed in range(3):
        for prompt_set in ("toy_30", "toy_300"):
            for mode in ("lora", "full", "progressive"):
                for lam in (0.0, 0.5):
                    fake_cell(root, mode, prompt_set, lam, seed)
    return root
