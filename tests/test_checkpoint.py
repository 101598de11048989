"""Resume checkpoints on a tiny module and optimizer: a round trip, and recovery after a kill between the two
renames that swap a new checkpoint in."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from ddpo_study import checkpoint
from ddpo_study.checkpoint import load_checkpoint_state, load_unet_tensors, optimizer_from_tensors, save_checkpoint


def tiny_model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1)


def train_step(model, optimizer, seed: int) -> None:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    model(x).square().sum().backward()
    optimizer.step()


def snapshot(model, optimizer):
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    moments = {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state_dict()["state"].items()}
    return weights, moments


def assert_restored(model, optimizer, expected) -> None:
    weights, moments = snapshot(model, optimizer)
    for key, value in expected[0].items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0)
    assert moments.keys() == expected[1].keys()
    for pid, state in expected[1].items():
        assert state.keys() == moments[pid].keys()
        for name, value in state.items():
            torch.testing.assert_close(moments[pid][name], value, rtol=0, atol=0)


def test_round_trip_restores_weights_optimizer_and_state(tmp_path):
    model, opt = tiny_model_and_optimizer(0)
    train_step(model, opt, 1)
    saved = snapshot(model, opt)
    folder = save_checkpoint(tmp_path / "latest", model, opt, {"epoch": 3, "phase": "lora"}, whole_unet=True,
                             export_lora=False)
    assert load_checkpoint_state(folder) == {"epoch": 3, "phase": "lora"}

    fresh, fresh_opt = tiny_model_and_optimizer(1)  # other weights, empty optimizer state
    assert not torch.equal(fresh.weight, saved[0]["weight"])
    load_unet_tensors(fresh, folder)
    optimizer_from_tensors(fresh_opt, folder / "optimizer.safetensors")
    assert_restored(fresh, fresh_opt, saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]  # no .tmp or .old left behind


def test_no_checkpoint_is_none(tmp_path):
    assert load_checkpoint_state(tmp_path / "latest") is None
    (tmp_path / "latest.tmp").mkdir()  # an unfinished write is not a checkpoint
    assert load_checkpoint_state(tmp_path / "latest") is None


def test_kill_between_the_two_renames_recovers_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = tiny_model_and_optimizer(0)
    train_step(model, opt, 1)
    first = snapshot(model, opt)
    latest = tmp_path / "latest"
    save_checkpoint(latest, model, opt, {"epoch": 1}, whole_unet=True, export_lora=False)

    train_step(model, opt, 2)  # the next epoch's weights differ from the saved ones
    assert not torch.equal(model.weight, first[0]["weight"])

    real_replace = os.replace

    def killed_before_second_rename(src, dst):
        if str(src).endswith(".tmp"):
            raise KeyboardInterrupt("killed")  # the process dies: no code after this runs
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_before_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(latest, model, opt, {"epoch": 2}, whole_unet=True, export_lora=False)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    # The state the kill left: the old checkpoint moved aside, the new one complete but not in place.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.old", "latest.tmp"]
    assert json.loads((tmp_path / "latest.tmp" / "state.json").read_text()) == {"epoch": 2}

    assert load_checkpoint_state(latest) == {"epoch": 1}
    assert (latest / "state.json").is_file() and not (tmp_path / "latest.old").exists()
    fresh, fresh_opt = tiny_model_and_optimizer(1)
    load_unet_tensors(fresh, latest)
    optimizer_from_tensors(fresh_opt, latest / "optimizer.safetensors")
    assert_restored(fresh, fresh_opt, first)

    # The next save replaces the stale .tmp and swaps in cleanly.
    save_checkpoint(latest, model, opt, {"epoch": 2}, whole_unet=True, export_lora=False)
    assert load_checkpoint_state(latest) == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
