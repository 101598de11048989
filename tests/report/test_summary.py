"""The grid summary on disk: every figure and table, byte-identical when re-run."""

from __future__ import annotations

from ddpo_study import report


def test_write_summary_is_byte_identical_when_rerun(fake_grid):
    first = report.write_summary(fake_grid)
    names = {p.name for p in first.files}
    for fig in ("reward_curves", "diversity_curves", "frontier", "final_bars"):
        assert f"{fig}.png" in names and f"{fig}.pdf" in names
    assert "montage.png" in names and "montage.pdf" not in names  # a grid of images: its PNG is the figure
    for table in ("questions", "moved", "final", "matched_reward", "learning", "cells"):
        assert f"{table}.csv" in names and f"{table}.md" in names
    before = {p: p.read_bytes() for p in first.files}
    for p in first.files:
        p.unlink()  # really write them again
    second = report.write_summary(fake_grid)
    assert [p for p in second.files if p.read_bytes() != before[p]] == []
    md = (fake_grid / "summary" / "questions.md").read_text()
    assert md.startswith("| id | kind | question |") and "Q1" in md
    assert "Questions: default questions, all exploratory (no grid spec found)" in (
        fake_grid / "summary" / "README.md").read_text()


def test_the_summary_reads_finished_cells_only(tmp_path):
    """A running cell (no DONE) is left out, so the summary a clone writes equals the committed one."""
    from tests.report.fakes import fake_cell

    for seed in range(2):
        fake_cell(tmp_path, "lora", seed=seed)
    running = next(p for p in tmp_path.iterdir() if p.name.endswith("-s1"))
    (running / "DONE").unlink()
    cells = report.write_summary(tmp_path).tables["cells"]
    assert len(cells) == 1 and running.name not in set(cells.iloc[:, 0])
    assert running.name in set(report.load_grid_results(tmp_path)["cell"])  # still there for a live view


def test_the_tidy_data_is_gzipped_readable_and_replaces_the_old_csv(fake_grid):
    """grid_results.csv.gz holds every finished row with its config; an older summary's plain csv is removed."""
    import pandas as pd

    out = fake_grid / "summary"
    out.mkdir(exist_ok=True)
    (out / "grid_results.csv").write_text("stale\n")
    report.write_summary(fake_grid)
    assert not (out / "grid_results.csv").exists()
    tidy = pd.read_csv(out / report.summary.TIDY_FILE)
    expected = report.load_grid_results(fake_grid, finished_only=True)
    assert len(tidy) == len(expected) > 0 and "cell_dir" not in tidy.columns
    assert list(tidy["cell"]) == list(expected["cell"])
    assert tidy["reward_mean"].round(6).equals(expected["reward_mean"].astype(float).round(6).reset_index(drop=True))
