"""The seam of the training loop: the driver samples, evaluates and updates only through a sampler family and an
objective, so a new algorithm or model family plugs in without touching the driver."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from ddpo_study import algorithm, train
from ddpo_study.sampler import DDIMFamily
from tests.conftest import tiny_config


def test_the_loop_goes_through_the_family_and_the_registered_objective(monkeypatch, tiny_model_dir,
                                                                       tiny_prompt_files, tmp_path):
    calls: list[tuple] = []

    class SpyFamily(DDIMFamily):
        def sample(self, pipe, denoiser, prompts, seeds, cfg, progress=False, epoch=0):
            calls.append(("sample", len(prompts)))
            return super().sample(pipe, denoiser, prompts, seeds, cfg, progress, epoch)

        def generate(self, pipe, denoiser, prompts, seeds, cfg):
            calls.append(("generate", len(prompts)))
            return super().generate(pipe, denoiser, prompts, seeds, cfg)

    real, family_name = algorithm.ALGORITHMS["ddpo"]

    class SpyObjective:
        name = "spy"

        def __init__(self, cfg, family):
            assert isinstance(family, SpyFamily)  # the objective scores with the run's family
            self.inner = real(cfg, family)

        def update(self, state, batch, advantages, epoch):
            calls.append(("update", epoch, len(batch), advantages.shape))
            return {**self.inner.update(state, batch, advantages, epoch), "train_spy": float(epoch)}

    monkeypatch.setattr(train, "family_for", lambda pipe: SpyFamily())
    monkeypatch.setitem(algorithm.ALGORITHMS, "ddpo", (SpyObjective, family_name))
    cfg = tiny_config(tiny_model_dir, tiny_prompt_files, tmp_path / "run", num_epochs=2, eval_every=2)
    out = train.run(cfg, progress=False)
    n_eval = cfg.eval_num_prompts * cfg.eval_num_seeds
    assert calls == [("generate", n_eval),  # epoch 0: the base model's eval
                     ("sample", 8), ("update", 1, 8, (8,)),
                     ("sample", 8), ("update", 2, 8, (8,)), ("generate", n_eval)]
    df = pd.read_csv(out / "metrics.csv")
    assert df["train_spy"].tolist()[1:] == [1.0, 2.0]  # what the objective returns is the epoch's row
    assert df["train_optimizer_steps"].iloc[1:].tolist() == [2, 2]


def test_unknown_algorithms_wrong_families_and_unknown_pipelines_are_one_clear_error():
    from ddpo_study.flow_sampler import FlowFamily

    with pytest.raises(ValueError, match=r"unknown algorithm 'grpo'; known: \['ddpo', 'flow_grpo', 'nft'\]"):
        algorithm.make_objective("grpo", None, DDIMFamily())
    with pytest.raises(ValueError, match="'flow_grpo' trains an SD3-type .* this model is an SD-type"):
        algorithm.make_objective("flow_grpo", None, DDIMFamily())
    with pytest.raises(ValueError, match="'ddpo' trains an SD-type .* this model is an SD3-type"):
        algorithm.make_objective("ddpo", None, FlowFamily())
    with pytest.raises(ValueError, match="no sampler family for a SimpleNamespace"):
        algorithm.family_for(SimpleNamespace(vae=object()))


def test_the_registry_is_the_configs_list_of_algorithms():
    from ddpo_study.config import ALGORITHMS

    assert tuple(algorithm.ALGORITHMS) == ALGORITHMS


def test_each_family_trains_its_pipelines_denoiser(tiny_pipe, tiny_sd3_pipe):
    assert algorithm.family_for(tiny_pipe).denoiser(tiny_pipe) is tiny_pipe.unet
    assert algorithm.family_for(tiny_sd3_pipe).denoiser(tiny_sd3_pipe) is tiny_sd3_pipe.transformer
