"""Synthetic run folders (config.json, metrics.csv, eval npz) with known effects, and eval-row frames, so that
what the report computes can be checked against what was put in; nothing trains."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ddpo_study.config import DDPOConfig

COLLAPSE = {"lora": 0.20, "full": 0.05, "progressive": 0.10}  # cross-div lost per unit of reward gained
GAIN = {"lora": 1.0, "full": 0.6, "progressive": 0.8}  # reward gained over the run


def curve(gain: float, e: int, epochs: int, base: float = 1.0) -> float:
    """The fake eval reward: a concave rise by ``gain`` over the run, so that a run reaches fraction f of its gain
    at epoch ``epochs * f**(1/0.7)``, off the eval grid."""
    return base + gain * (e / epochs) ** 0.7


def fake_cell(root, mode="lora", prompt_set="toy_30", lam=0.0, seed=0, epochs=12, eval_every=2, p=4, s=2,
              reward="jpeg_compressibility", gain=None, switch=2, base=1.0, **config):
    """A finished run whose eval reward rises by ``gain`` (:func:`curve`; default :data:`GAIN` of the mode, 0.2
    less with a penalty) and whose diversity metrics fall by :data:`COLLAPSE` per unit of reward gained (halved
    for toy_300 and for a penalty); ``config``: more config values (e.g. ``algorithm``, ``model``), named in the
    folder."""
    name = "-".join([*map(str, config.values()), f"{prompt_set}-{mode}-lam{lam}-{reward}-s{seed}"])
    cell = root / name
    (cell / "eval").mkdir(parents=True)
    cfg = DDPOConfig(output_dir=str(cell), mode=mode, prompt_set=prompt_set, diversity_lambda=lam, seed=seed,
                     num_epochs=epochs, eval_every=eval_every, progressive_switch_epoch=switch, reward=reward,
                     **config)
    (cell / "config.json").write_text(json.dumps(cfg.to_dict()))
    rng = np.random.default_rng([seed, len(name)])
    gain = (GAIN[mode] - (0.2 if lam else 0.0)) if gain is None else gain
    collapse = COLLAPSE[mode] * (0.5 if prompt_set == "toy_300" else 1.0) * (0.5 if lam else 1.0)
    rows = []
    for e in range(epochs + 1):
        reward_e = curve(gain, e, epochs, base) + (0.004 * rng.standard_normal() if e else 0.0)
        row = {"epoch": e, "train_reward_mean": reward_e - 0.01, "param_dist": 0.1 * e,
               "train_approx_kl": 1e-4 * e if e else np.nan, "train_clipfrac": 0.01 * e if e else np.nan,
               "phase": ("lora" if mode == "lora" or (mode == "progressive" and e > switch) else "full")
               if e else np.nan}
        if e % eval_every == 0 or e == epochs:
            row.update(reward_mean=reward_e,
                       cross_div_clip=0.3 - collapse * (reward_e - base) + 0.001 * rng.standard_normal(),
                       within_div_clip=0.2, cross_div_pixel=40.0, within_div_pixel=30.0,
                       retrieval_acc=0.5 - collapse * (reward_e - base), retrieval_chance=1 / p, clip_score=0.3,
                       vendi_clip=3.0, dist_base_clip=0.01 * e, dist_base_pixel=float(e),
                       judge_all=0.7 - collapse * (reward_e - base),
                       time_eval_s=0.1)
        rows.append(row)
    pd.DataFrame(rows).to_csv(cell / "metrics.csv", index=False)
    for e in sorted({0, *range(eval_every, epochs + 1, eval_every), epochs}):
        imgs = rng.integers(0, 256, size=(p, s, 8, 8, 3), dtype=np.uint8)
        per_image = curve(gain, e, epochs, base) + 0.05 * rng.standard_normal((p, s))
        np.savez_compressed(cell / "eval" / f"epoch_{e:04d}.npz", images=imgs, rewards=per_image,
                            prompts=np.array([f"prompt {i}" for i in range(p)]))
    (cell / "DONE").write_text(json.dumps({"epochs": epochs}))
    return cell


def eval_frame(curves: dict[str, list[tuple[int, float]]], mode: str = "lora", switch: int = 5,
               reward: str = "jpeg_compressibility", metric=None) -> pd.DataFrame:
    """Eval rows of runs named by ``curves`` (cell -> [(epoch, eval reward), ...]); seed = position in ``curves``;
    ``metric`` (default: 10 x the reward) as ``cross_div_clip``."""
    rows = []
    for seed, (cell, curve) in enumerate(curves.items()):
        for epoch, r in curve:
            rows.append({"cell": cell, "seed": seed, "epoch": epoch, "reward_mean": r, "mode": mode,
                         "progressive_switch_epoch": switch, "reward": reward, "condition": mode,
                         "condition_order": 0, "cross_div_clip": 10 * r if metric is None else metric(epoch, r)})
    return pd.DataFrame(rows)
