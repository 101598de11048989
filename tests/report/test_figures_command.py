"""``python -m ddpo_study figures``: every figure README.md and docs/*.md embed has a producer, a figure without one
fails in one line, and producers give the same bytes when re-run (the full command is not run here: it samples)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from ddpo_study.grid.spec import REPO_ROOT
from ddpo_study.report import figures_index as fi
from tests.report.fakes import fake_cell


def test_every_embedded_figure_is_committed_and_has_a_producer():
    figures = fi.embedded_figures()
    assert {"results/toy_plateau/summary/montage.png", "results/toy_plateau/summary/frontier.png",
            "results/guard_example/dashboard.png", "results/diagnose_plateau_lora-s5/images_shared.png"} <= set(figures)
    assert all((REPO_ROOT / path).is_file() for path in figures)
    jobs = fi.plan()  # raises on a figure no producer makes
    assert sorted(p for paths in jobs.values() for p in paths) == sorted(figures)
    assert {(producer.name, key) for producer, key in jobs} >= {("grid summary", "results/toy_plateau"),
                                                               ("monitor dashboard", "results/guard_example")}


def test_a_figure_no_producer_makes_fails_in_one_line(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# P\n\n![a plot](../results/elsewhere/plot.png) "
                                               "![web](https://example.org/x.png)\n")
    with pytest.raises(fi.FiguresError) as err:
        fi.plan(tmp_path)
    message = str(err.value)
    assert "\n" not in message and "results/elsewhere/plot.png (embedded in docs/page.md)" in message
    assert "example.org" not in message


def test_producers_rewrite_the_same_bytes(tmp_path):
    for seed in range(2):
        for mode in ("lora", "full"):
            fake_cell(tmp_path / "results" / "fake", mode, seed=seed)
    example = tmp_path / "results" / "guard_example"
    example.mkdir()
    shutil.copy(REPO_ROOT / "results" / "guard_example" / "monitor.csv", example)
    (tmp_path / "README.md").write_text("# R\n\n![curves](results/fake/summary/frontier.png)\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("![images](../results/fake/summary/montage.png)\n\n"
                                               "![dashboard](../results/guard_example/dashboard.png)\n")
    lines = []
    figures = fi.rebuild(tmp_path, echo=lines.append)
    assert sorted(figures) == ["results/fake/summary/frontier.png", "results/fake/summary/montage.png",
                               "results/guard_example/dashboard.png"]
    assert len(lines) == 2  # one producer run per grid or example, however many of its figures are embedded
    written = {p: p.read_bytes() for p in tmp_path.rglob("*")
               if p.is_file() and ("summary" in p.parts or p.name.startswith("dashboard"))}
    assert len(written) > 10
    for p in written:
        p.unlink()  # really write them again
    fi.rebuild(tmp_path, echo=None)
    assert [p for p, data in written.items() if p.read_bytes() != data] == []
    # the dashboard is the committed one: drawn from the committed monitor.csv, titled by the watched folder
    committed = REPO_ROOT / "results" / "guard_example"
    for name in ("dashboard.png", "dashboard.html"):
        assert (example / name).read_bytes() == (committed / name).read_bytes()


def test_a_sampled_figure_is_rewritten_only_beyond_float_noise(tmp_path):
    pixels = np.random.default_rng(0).integers(1, 254, size=(8, 8, 3), dtype=np.uint8)
    committed, new = tmp_path / "committed.png", tmp_path / "new.png"
    Image.fromarray(pixels).save(committed)
    before = committed.read_bytes()
    noisy = pixels.copy()
    noisy[0, 0, 0] += 1
    Image.fromarray(noisy).save(new)
    assert fi.keep_or_replace(new, committed).startswith("kept (float noise") and committed.read_bytes() == before
    Image.fromarray(pixels).save(new)
    assert fi.keep_or_replace(new, committed) == "kept (the same pixels)"
    Image.fromarray(255 - pixels).save(new)
    assert fi.keep_or_replace(new, committed) == "rewritten" and committed.read_bytes() != before
    Image.fromarray(pixels).save(new)
    assert fi.keep_or_replace(new, tmp_path / "absent" / "fig.png") == "rewritten"
    assert (tmp_path / "absent" / "fig.png").is_file()
