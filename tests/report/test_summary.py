"""The grid summary on disk: every figure and table, byte-identical when re-run."""

from __future__ import annotations

from ddpo_study import report


def test_write_summary_is_byte_identical_when_rerun(fake_grid):
    first = report.write_summary(fake_grid)
    names = {p.name for p in first.files}
    for fig in ("reward_curves", "diversity_curves", "frontier", "final_bars", "montage"):
        assert f"{fig}.png" in names and f"{fig}.pdf" in names
    for table in ("questions", "final", "matched_reward", "learning", "cells"):
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
