"""The eval protocol: fixed seeds, the judge's metrics, and eval files that reload exactly."""

import numpy as np
import pytest
import torch

from ddpo_study.config import EVAL_SEED_BASE
from ddpo_study.evaluation import (
    eval_file,
    eval_seeds,
    judge_metrics,
    link_file,
    load_eval_images,
    resolve_eval_file,
    save_eval_images,
    share_eval_file,
    unlinked_shared_evals,
)
from ddpo_study.toy import world


def test_eval_seeds_are_the_same_fixed_block_in_every_run():
    assert eval_seeds(3) == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1, EVAL_SEED_BASE + 2]


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
    with pytest.raises(ValueError, match="sha256"):
        load_eval_images(cells[1], 0)
    shared.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        load_eval_images(cells[1], 0)


def test_judge_metrics_score_toy_prompts_and_skip_others():
    prompts = ["a large red square in the center on a blue background",
               "a small white circle on the left on a black background"]
    g = torch.Generator().manual_seed(0)
    images = torch.stack([world.render_prompts(prompts, 32, g) for _ in range(3)], dim=1)  # (P, S, 3, H, W)
    metrics = judge_metrics(images, prompts)
    assert metrics["judge_all"] == 1.0
    swapped = judge_metrics(images.flip(0), prompts)
    assert swapped["judge_color"] == 0.0
    assert metrics["judge_distinct"] == 2.0 and metrics["judge_distinct_frac"] == 1.0
    same = judge_metrics(images[:1].expand(2, -1, -1, -1, -1), prompts)  # one image for both prompts
    assert same["judge_distinct"] == 1.0
    assert judge_metrics(images, ["a red circle", "a blue square"]) == {}
