"""Reward gain per CPU-minute: recipes of DDPO and its successors trained side by side on LoRA / toy_30 / the toy
aesthetic reward, several seeds each.

    python benchmarks/time_to_plateau.py [--budget-min 10] [--recipes new nft flow-grpo ...] [--seeds 0 1 2] [--jobs 2]

Each recipe is a set of ``DDPOConfig`` settings (below, with where they come from). Every recipe trains one
thread per run (``num_threads 1``, so CPU-seconds are comparable), in chunks of ``eval_every`` epochs: a
chunk ends with an eval (32 held-out prompts x 4 fixed seeds, the recipe's own sampler), then the run
resumes from its checkpoint (exactly: ``train.run`` resumes bit for bit). A recipe stops when its eval reward
**plateaus** or when its training CPU time exceeds the budget.

* gain(e): mean eval reward at epoch e minus the base model's (epoch 0), over the same 128 images;
* plateau: the first eval e with at least 4 evals after epoch 0 whose gain is real (paired z > 2, standard
  errors clustered by prompt: ``report.paired_reward_gain``) and whose gain over the last quarter of its training
  time is small: gain(e) - gain(e') <= 15% of gain(e), e' the last eval at or before 75% of e's CPU time; the
  plateau epoch is e (a flat curve that never gained is not a plateau: it runs to the budget). A recipe whose
  reward falls (a broken model) plateaus trivially: the table also shows its best gain and the diversity it kept;
* the rule is a stopping rule and cannot see the future: a curve that stalls and climbs again stops at the stall.
  The study-v2 recipe does that on seed 0: the rule stops it at epoch 35, where this run equals the study's
  seed-0 LoRA cell, and that cell gained +0.31 more by epoch 80 (``results/toy_study/summary/learning.md``,
  ``gain_after_flat``); a 240-epoch run of the same config gained +0.44 more, peaking at epoch 215
  (``results/toy_plateau``, docs/findings.md "240 epochs"). So compare recipes on the equal-CPU-time column rather
  than on their plateau epochs;
* CPU-seconds: the summed ``cpu_epoch_s`` of the training epochs (sample, reward, PPO; evals excluded);
* time to 50% / 90%: the CPU time of the first eval whose gain reaches that share of the final gain (an
  upper bound: no interpolation between evals);
* at equal CPU time: each recipe's gain at its last eval within the new recipe's time to plateau.

* at equal CPU time: each run's gain at its last eval within ``--equal-cpu-min`` of training CPU time;
* gain per CPU-minute: the final gain divided by the CPU-minutes it took.

Each recipe runs once per seed (run folders ``<out>/<recipe>-s<seed>``); the seed sets the prompt draws, the
sampling noise and the LoRA initialisation, while the eval images' seeds are the same in every run. The last line
compares recipes on the mean over seeds of gain per CPU-minute, with Fieller's 95% interval for the ratio
(``report.stats.ratio_ci``; unbounded when the denominator's seeds do not exclude zero):
``gain per CPU-minute: NFT/DDPO-v2 (UNet toy) = X [low, high]; NFT/Flow-GRPO (flow toy) = Y [low, high]`` (and the
older recipes' ratios to ``new`` when they ran). Results go to ``<results>/``: ``time_to_plateau.csv`` (a row per
recipe x seed), ``by_recipe.csv`` (means and intervals over seeds), ``curves.csv`` (every eval of every run),
``time_to_plateau.md`` and ``run.log`` (appended by each invocation, headed by the command, machine and date). A
run that stopped in an earlier invocation is reused (delete its run folder to train it again). Not a test: each
run costs up to the budget plus its evals, two at a time on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ddpo_study.report.tables import PLATEAU_LATE_FRACTION, PLATEAU_LATE_GAIN  # the rule's one home
from ddpo_study.rundir import load_metrics, read_config

REPO = Path(__file__).resolve().parent.parent
COMMON = dict(model="toy", mode="lora", prompt_set="toy_30", reward="aesthetic", eval_prompt_set="toy_eval",
              eval_num_prompts=32, eval_num_seeds=4, num_threads=1, seed=0, diversity_lambda=0.0)

#: name -> (settings over COMMON, epochs per eval chunk). "new" (DDPO v2) is read from the study spec (its one home),
#: the successors' recipes from ``configs/recipes/`` (:func:`file_recipes`).
RECIPES = {
    # The 20-epoch study recipe of configs/toy_study.yaml before study v2 (docs/recipe.md):
    # 20 DDIM steps, groups of 8, one optimizer step on all 64 samples, LoRA lr 3e-3, no step control.
    "current": (dict(num_steps=20, samples_per_epoch=64, images_per_prompt=8, train_batch_size=16,
                     gradient_accumulation_steps=4, lora_learning_rate=3e-3, sample_batch_size=64), 5),
    # TRL 0.23.1 DDPOConfig defaults: 50 steps, 2 samples an epoch (sample_batch_size 1 x 2 batches), train batch 1,
    # one optimizer step per sample over all timesteps (timestep_fraction 1), lr 3e-4, batch-normalised
    # advantages (per_prompt_stat_tracking False), uniform prompt draws.
    "trl": (dict(num_steps=50, samples_per_epoch=2, images_per_prompt=1, sample_batch_size=2, train_batch_size=1,
                 gradient_accumulation_steps=1, timestep_fraction=1.0, lora_learning_rate=3e-4,
                 per_prompt_stat_tracking=False, stat_buffer_size=16, stat_min_count=16), 40),
    # ddpo-pytorch (config/base.py + dgx.py's aesthetic run): 50 steps, uniform draws, per-prompt buffer 32 / min
    # 16, all timesteps, lr 3e-4, 2 optimizer steps an epoch. Its 256 samples an epoch are 8 GPUs' worth: scaled to
    # our 64 (train batch 16 x 2 accumulation = 2 steps of 32), else an epoch alone costs minutes of CPU.
    "ddpo-pytorch": (dict(num_steps=50, samples_per_epoch=64, images_per_prompt=1, sample_batch_size=64,
                          train_batch_size=16, gradient_accumulation_steps=2, timestep_fraction=1.0,
                          lora_learning_rate=3e-4, stat_buffer_size=32, stat_min_count=16), 2),
}
STUDY_SPEC = REPO / "configs" / "toy_study.yaml"
FINISHED = "PLATEAU_OR_BUDGET"  # a recipe's run folder has this once it stopped (a later invocation reuses it)


RECIPE_DIR = REPO / "configs" / "recipes"  # the successors' recipes, each with its reasons in its header


def file_recipes() -> dict[str, tuple[dict, int]]:
    """``configs/recipes/<name>.yaml``: DDPOConfig settings over COMMON, and ``eval_every`` (the chunk)."""
    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        settings = yaml.safe_load(path.read_text())
        out[path.stem] = settings, int(settings.pop("eval_every", 5))
    return out


def new_recipe() -> tuple[dict, int]:
    """The study's own recipe: the spec's fixed settings that are training settings."""
    spec = yaml.safe_load(STUDY_SPEC.read_text())
    keep = {k: v for k, v in spec["fixed"].items() if k not in COMMON or k == "reward"}
    keep.pop("num_epochs", None)
    return keep, int(keep.pop("eval_every", 5))


def train_chunk(cfg: dict, out: Path) -> pd.DataFrame:
    cfg_file = out.with_suffix(".json")
    cfg_file.write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "ddpo_study", "train", str(cfg_file)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{out.name}: training failed\n{proc.stderr[-2000:]}")
    return load_metrics(out)


def curve(df: pd.DataFrame, out: Path) -> pd.DataFrame:
    """Eval rows with the gain over epoch 0, its clustered z and the cumulative training CPU time at that epoch."""
    from ddpo_study.report import paired_reward_gain

    df = df.sort_values("epoch").copy()
    df["cpu_s"] = df["cpu_epoch_s"].fillna(0).cumsum()
    ev = df[df["reward_mean"].notna()].copy()
    ev["gain"] = ev["reward_mean"] - ev["reward_mean"].iloc[0]
    ev["z"] = [paired_reward_gain(out, int(e))["z"] if e else 0.0 for e in ev["epoch"]]
    return ev


def plateau_row(ev: pd.DataFrame) -> int | None:
    """Index (into ``ev``) of the first eval that meets the plateau rule (module docstring), or None."""
    for i in range(4, len(ev)):
        g, t = ev["gain"].iloc[i], ev["cpu_s"].iloc[i]
        earlier = ev[ev["cpu_s"] <= PLATEAU_LATE_FRACTION * t]
        if ev["z"].iloc[i] > 2 and len(earlier) and g - earlier["gain"].iloc[-1] <= PLATEAU_LATE_GAIN * g:
            return i
    return None


def run_recipe(name: str, settings: dict, chunk: int, budget_s: float, out: Path, log) -> pd.DataFrame:
    if (out / FINISHED).is_file():  # finished by an earlier invocation: reuse it if it is this recipe
        saved = read_config(out)
        want = {**COMMON, **settings, "eval_every": chunk, "seed": saved.get("seed")}
        if all(saved.get(k) == v for k, v in want.items()):
            log(f"{out.name}: reusing the finished run in {out}")
            return curve(load_metrics(out), out)
        raise SystemExit(f"error: {out} holds another recipe's run; delete it to re-run {name}")
    seed = int(out.name.rsplit("-s", 1)[1]) if "-s" in out.name else 0
    epochs = 0
    while True:
        epochs += chunk
        cfg = {**COMMON, **settings, "seed": seed, "eval_every": chunk, "num_epochs": epochs, "output_dir": str(out)}
        ev = curve(train_chunk(cfg, out), out)
        log(f"{out.name}: epoch {epochs}, cpu {ev['cpu_s'].iloc[-1]:.0f}s, gain {ev['gain'].iloc[-1]:+.3f}")
        if plateau_row(ev) is not None or ev["cpu_s"].iloc[-1] >= budget_s:
            (out / FINISHED).write_text(json.dumps({"epochs": epochs}) + "\n")
            return ev


def run_row(ev: pd.DataFrame, equal_cpu_s: float) -> dict:
    """One run's columns (module docstring): where it stopped, its gain and the diversity it kept there."""
    i = plateau_row(ev)
    end = ev.iloc[i] if i is not None else ev.iloc[-1]
    final = end["gain"]

    def time_to(share):
        hit = ev[(ev["gain"] >= share * final) & (ev["epoch"] > 0)] if final > 0 else ev.iloc[0:0]
        return hit["cpu_s"].iloc[0] if len(hit) else float("nan")

    before = ev[ev["cpu_s"] <= equal_cpu_s]
    return {
        "plateau": "yes" if i is not None else "no (budget)", "epoch": int(end["epoch"]),
        "cpu_s": end["cpu_s"], "final_gain": final, "final_z": end["z"], "best_gain": ev["gain"].max(),
        "cpu_s_to_50%": time_to(0.5), "cpu_s_to_90%": time_to(0.9),
        "gain_at_equal_cpu": before["gain"].iloc[-1] if len(before) > 1 else float("nan"),
        "gain_per_cpu_min": final / (end["cpu_s"] / 60) if end["cpu_s"] > 0 else float("nan"),
        "cpu_s_per_epoch": end["cpu_s"] / end["epoch"] if end["epoch"] else float("nan"),
        "cross_div_clip": end.get("cross_div_clip"), "retrieval_acc": end.get("retrieval_acc"),
        "judge_all": end.get("judge_all"), "judge_distinct": end.get("judge_distinct", float("nan")),
        "base_reward": ev["reward_mean"].iloc[0],
    }


def by_recipe(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t-interval over seeds of each numeric column, a row per recipe."""
    from ddpo_study.report.stats import mean_ci

    rows = []
    for recipe, runs in table.groupby("recipe", sort=False):
        row = {"recipe": recipe, "seeds": len(runs), "plateaus": int((runs["plateau"] == "yes").sum())}
        for col in SUMMARY_COLUMNS:
            m, lo, hi, _ = mean_ci(runs[col])
            row[col], row[f"{col}_lo"], row[f"{col}_hi"] = m, lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


SUMMARY_COLUMNS = ("final_gain", "gain_per_cpu_min", "gain_at_equal_cpu", "cpu_s_to_50%", "cpu_s_to_90%", "cpu_s",
                   "cpu_s_per_epoch", "judge_all", "retrieval_acc", "cross_div_clip")
#: the last line's ratios: (label, numerator recipe, denominator recipe)
RATIOS = (("NFT/DDPO-v2 (UNet toy)", "nft", "new"), ("NFT/Flow-GRPO (flow toy)", "nft-flow", "flow-grpo"),
          ("NFT/Flow-GRPO-Fast (flow toy)", "nft-flow", "flow-grpo-fast"),
          ("new/current", "new", "current"), ("new/TRL", "new", "trl"), ("new/ddpo-pytorch", "new", "ddpo-pytorch"))


def ratio_line(table: pd.DataFrame) -> str:
    """``gain per CPU-minute: A/B = X [low, high]; ...``: ratio of the seed means, Fieller's 95% interval."""
    from ddpo_study.report.stats import ratio_ci

    per = {r: runs["gain_per_cpu_min"].to_numpy() for r, runs in table.groupby("recipe")}
    parts = []
    for label, a, b in RATIOS:
        if a not in per or b not in per:
            continue
        if per[b].mean() <= 0:
            parts.append(f"{label} = n/a ({b} did not gain)")
            continue
        x, lo, hi = ratio_ci(per[a], per[b])
        ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) and np.isfinite(hi) else \
            (" [unbounded]" if np.isinf(lo) else " [no CI: one seed]")
        parts.append(f"{label} = {x:.2f}{ci}")
    return "gain per CPU-minute: " + "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-min", type=float, default=10.0, help="training CPU-minutes per run (cap)")
    ap.add_argument("--equal-cpu-min", type=float, default=5.0,
                    help="the CPU time at which every run's gain is compared (the 'gain at equal CPU' column)")
    ap.add_argument("--recipes", nargs="+", default=["current", "trl", "ddpo-pytorch", "new"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds per recipe (run folders <recipe>-s<seed>)")
    ap.add_argument("--jobs", type=int, default=2, help="runs trained at once (one thread each)")
    ap.add_argument("--out", default="runs/time_to_plateau")
    ap.add_argument("--results", default="results/time_to_plateau", help="where the tables and the log are written")
    args = ap.parse_args()
    recipes = {**RECIPES, **file_recipes(), "new": new_recipe()}
    unknown = [r for r in args.recipes if r not in recipes]
    if unknown:
        raise SystemExit(f"error: unknown recipe(s) {unknown}; known: {sorted(recipes)}")
    out_root, results = Path(args.out), Path(args.results)
    out_root.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    log_file = results / "run.log"

    def log(line: str) -> None:
        print(line, flush=True)
        with log_file.open("a") as f:
            f.write(line + "\n")

    log(f"# {' '.join(sys.argv)}  ({platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})")
    # seeds outermost: every recipe's seed 0 first, so a run cut short still has one seed of each
    runs = [(r, s) for s in args.seeds for r in args.recipes]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {(r, s): pool.submit(run_recipe, r, *recipes[r], args.budget_min * 60, out_root / f"{r}-s{s}", log)
                   for r, s in runs}
        curves = {key: f.result() for key, f in futures.items()}
    table = pd.DataFrame([{"recipe": r, "seed": s, **run_row(ev, args.equal_cpu_min * 60)}
                          for (r, s), ev in curves.items()])
    table.to_csv(results / "time_to_plateau.csv", index=False, float_format="%.4g")
    pd.concat([ev.assign(recipe=r, seed=s) for (r, s), ev in curves.items()]).to_csv(
        results / "curves.csv", index=False, float_format="%.5g")
    summary = by_recipe(table)
    summary.to_csv(results / "by_recipe.csv", index=False, float_format="%.4g")
    text = table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    (results / "time_to_plateau.md").write_text("```\n" + text + "\n```\n")
    log(text)
    log(ratio_line(table))


if __name__ == "__main__":
    main()
