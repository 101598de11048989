"""The run folder (ddpo_study/rundir.py): its files written and read back, the eval store with its shared base-eval
links, and strict reading: a finished run whose files are damaged is one line naming the file, from the library and
from ``summary``, never a shorter curve or a cell gone from the tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ddpo_study import cli, report, rundir
from ddpo_study.rundir import (
    DamagedRunError,
    eval_file,
    link_file,
    load_eval_images,
    resolve_eval_file,
    save_eval_images,
    share_eval_file,
    unlinked_shared_evals,
)
from tests.report.fakes import fake_cell


# ----------------------------------------------------------------------------------------------- the eval store
def test_saved_eval_images_reload_as_saved(tmp_path):
    (tmp_path / "eval").mkdir()
    images = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    save_eval_images(tmp_path, 4, images, ["a", "b"], rewards=torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    back = load_eval_images(tmp_path, 4)
    assert back.shape == images.shape
    assert (back - images).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    with np.load(tmp_path / "eval" / "epoch_0004.npz") as data:
        assert data["rewards"][1, 2] == 6 and list(data["prompts"]) == ["a", "b"]
    assert (tmp_path / "eval" / "epoch_0004.png").is_file()
    assert load_eval_images(tmp_path, 5) is None


def test_identical_base_evals_share_one_copy_that_a_clone_reads_through_its_link(tmp_path):
    images = torch.rand(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cells = [tmp_path / "grid" / name for name in ("lora-s0", "full-s0")]
    for cell in cells:
        (cell / "eval").mkdir(parents=True)
        save_eval_images(cell, 0, images, ["a", "b"], rewards=torch.ones(2, 2))
    store = tmp_path / "grid" / "base_eval"
    links = [share_eval_file(cell, 0, store) for cell in cells]
    assert len(list(store.glob("*.npz"))) == 1  # same images, same bytes: one copy
    assert links[0].read_text() == links[1].read_text()  # relative: the same text in every cell
    assert share_eval_file(cells[0], 0, store).read_text() == links[0].read_text()  # idempotent
    assert share_eval_file(cells[0], 7, store) is None  # no images of that epoch
    expected = load_eval_images(cells[0], 0)
    for cell in cells:  # a clone: the cells' own npz are not committed, the link and the shared copy are
        eval_file(cell, 0).unlink()
    assert resolve_eval_file(cells[1], 0).parent == store
    assert torch.equal(load_eval_images(cells[1], 0), expected)
    other = torch.rand(2, 2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    save_eval_images(cells[1], 0, other, ["a", "b"])  # a different base (another model): a second copy
    share_eval_file(cells[1], 0, store)
    assert len(list(store.glob("*.npz"))) == 2 and link_file(cells[0], 0).read_text() != links[1].read_text()
    assert unlinked_shared_evals(store) == []  # each copy is named by a cell
    first = resolve_eval_file(cells[0], 0)
    save_eval_images(cells[0], 0, other, ["a", "b"])  # the other cell re-trained on that base too
    share_eval_file(cells[0], 0, store)
    assert unlinked_shared_evals(store) == [first] and first.is_file()  # listed for a person, never deleted
    eval_file(cells[1], 0).unlink()
    shared = resolve_eval_file(cells[1], 0)
    shared.write_bytes(shared.read_bytes()[:-1] + b"x")  # altered after the link was written
    with pytest.raises(DamagedRunError, match="sha256"):
        load_eval_images(cells[1], 0)
    shared.unlink()
    with pytest.raises(DamagedRunError, match="missing"):
        load_eval_images(cells[1], 0)


# ----------------------------------------------------------------------------------------------- metrics and DONE
def test_metrics_round_trip_and_a_resume_reads_the_rows_up_to_its_checkpoint(tmp_path):
    rows = [{"epoch": 0, "reward_mean": 1.0}, {"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4}]
    rundir.write_metrics(tmp_path, rows)
    assert rundir.read_metrics(tmp_path, 1) == rows[:2]  # NaNs dropped, rows after the checkpoint redone
    assert rundir.read_metrics(tmp_path / "none", 5) == []
    assert not rundir.is_finished(tmp_path, 2)  # no DONE
    rundir.write_done(tmp_path, 2)
    assert json.loads((tmp_path / rundir.DONE_FILE).read_text()) == {"epochs": 2} and rundir.read_done(tmp_path) == 2
    assert rundir.is_finished(tmp_path, 2) and not rundir.is_finished(tmp_path, 3)
    assert rundir.load_metrics(tmp_path)["epoch"].tolist() == [0, 1, 2]


def cut_mid_row(path, epoch: int) -> None:
    """Keep ``path`` up to the middle of the row of ``epoch``, as a disk or copy that stopped would."""
    lines = path.read_text().splitlines(keepends=True)
    row = lines[epoch + 1]
    path.write_text("".join(lines[:epoch + 1]) + row[:len(row) // 2])


def test_a_finished_run_is_read_strictly_and_a_running_one_as_it_is(tmp_path):
    cell = fake_cell(tmp_path, "lora", epochs=12)
    metrics = cell / rundir.METRICS_FILE
    whole = metrics.read_text()
    rundir.check_finished(cell)  # sound

    cut_mid_row(metrics, 8)
    with pytest.raises(DamagedRunError, match=r"metrics.csv: line 10 has \d+ of the header's \d+ fields"):
        rundir.load_metrics(cell)
    lines = whole.splitlines(keepends=True)
    metrics.write_text("".join(lines[:10]))  # cut at a line end: rows for epochs 0-8 only
    with pytest.raises(DamagedRunError, match="no row for epoch 9-12, though DONE says the run finished 12 epochs"):
        rundir.load_metrics(cell)
    metrics.write_text(whole[:-3])  # the last row's last field cut short
    with pytest.raises(DamagedRunError, match="no line end"):
        rundir.load_metrics(cell)
    metrics.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DamagedRunError, match="not text"):
        rundir.load_metrics(cell)
    metrics.write_text("garbage\nmore garbage\n")
    with pytest.raises(DamagedRunError, match="no epoch column"):
        rundir.load_metrics(cell)
    metrics.unlink()
    with pytest.raises(DamagedRunError, match="metrics.csv: missing"):
        rundir.check_finished(cell)
    assert cell in report.find_cells(tmp_path)  # a finished run without its metrics is still found, as damaged

    (cell / rundir.DONE_FILE).unlink()  # still training: read as it is, its last rows are redone on resume
    metrics.write_text("".join(lines[:10]))
    assert rundir.load_metrics(cell)["epoch"].tolist() == list(range(9))
    rundir.check_finished(cell)
    (cell / rundir.DONE_FILE).write_text("{not json")
    with pytest.raises(DamagedRunError, match='DONE: not {"epochs": N}'):
        rundir.read_done(cell)


def test_a_finished_run_without_the_rewards_the_summary_reads_or_with_an_unreadable_eval_file_is_damaged(tmp_path):
    cell = fake_cell(tmp_path, "lora", epochs=12)
    eval_file(cell, 12).write_bytes(b"PK not a zip")
    with pytest.raises(DamagedRunError, match=r"epoch_0012.npz: unreadable"):
        rundir.check_finished(cell)
    eval_file(cell, 12).unlink()
    with pytest.raises(DamagedRunError, match=r"epoch_0012.rewards.npz: missing"):
        rundir.check_finished(cell)


# ----------------------------------------------------------------------------------------------- summary
def two_cell_grid(root):
    """Two finished LoRA runs (seeds 0, 1) whose epoch-0 images are kept once per grid, as a clone has them."""
    cells = [fake_cell(root, "lora", seed=seed, epochs=4, eval_every=2) for seed in (0, 1)]
    for cell in cells:
        share_eval_file(cell, 0, root / rundir.SHARED_EVAL_DIR)
        rundir.ensure_rewards_file(cell, 0)
        eval_file(cell, 0).unlink()
    return cells


def damage_truncate(cell):
    cut_mid_row(cell / rundir.METRICS_FILE, 2)
    return "metrics.csv: line 4 has"


def damage_garbage(cell):
    (cell / rundir.METRICS_FILE).write_text("\x00\x13 garbage, not a table\n")
    return "metrics.csv: no epoch column"


def damage_base_eval(cell):
    target = resolve_eval_file(cell, 0)
    target.write_bytes(target.read_bytes()[:-1] + b"x")
    return "epoch_0000.link.json: " + str(target.parent)


@pytest.mark.parametrize("damage", [damage_truncate, damage_garbage, damage_base_eval])
def test_summary_stops_on_a_damaged_finished_cell_with_one_line_naming_the_file(tmp_path, capsys, damage):
    cells = two_cell_grid(tmp_path)
    expected = damage(cells[1])
    assert cli.main(["summary", str(tmp_path)]) == 2  # the notebook never starts
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: damaged run folder: {cells[1]}"), err
    assert expected in err[0], err
    assert cli.main(["summary", str(tmp_path), "--no-notebook"]) == 2
    assert not (tmp_path / "summary" / "cells.md").exists()


def test_summary_with_allow_damaged_lists_the_damaged_cell_in_cells_md(tmp_path, capsys):
    sound, broken = two_cell_grid(tmp_path)
    damage_truncate(broken)
    assert cli.main(["summary", str(tmp_path), "--no-notebook", "--allow-damaged"]) == 0
    cells = pd.read_csv(tmp_path / "summary" / "cells.csv").set_index("cell")
    assert list(cells.index) == [sound.name, broken.name]
    assert cells.loc[broken.name, "damaged"].startswith(f"damaged run folder: {broken / rundir.METRICS_FILE}")
    assert pd.isna(cells.loc[sound.name, "damaged"]) and cells.loc[sound.name, "epochs_done"] == 4
    assert "1 damaged cell(s) left out" in (tmp_path / "summary" / "README.md").read_text()
    tidy = pd.read_csv(tmp_path / "summary" / report.summary.TIDY_FILE)
    assert set(tidy["cell"]) == {sound.name}  # its rows are in no table


def test_a_sound_summary_has_no_damaged_column(tmp_path):
    two_cell_grid(tmp_path)
    assert "damaged" not in report.write_summary(tmp_path).tables["cells"]
