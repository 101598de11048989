"""Reward gain per CPU-minute: DDPO recipes trained side by side on LoRA / toy_30 / the toy aesthetic reward.

    python benchmarks/time_to_plateau.py [--budget-min 10] [--recipes current trl ddpo-pytorch new] [--jobs 2]

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

Last line: ``gain per CPU-minute, new/current = X; new/TRL = Y; new/ddpo-pytorch = Z`` (final gain divided by the
CPU-minutes it took). Results go to ``<results>/time_to_plateau.{csv,md}`` and ``curves.csv``. A recipe that stopped
in an earlier invocation is reused (delete its run folder to train it again). Not a test: ~25 min on
2 cores at the default budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from ddpo_study.report.tables import PLATEAU_LATE_FRACTION, PLATEAU_LATE_GAIN  # the rule's one home
from ddpo_study.rundir import load_metrics, read_config

REPO = Path(__file__).resolve().parent.parent
COMMON = dict(model="toy", mode="lora", prompt_set="toy_30", reward="aesthetic", eval_prompt_set="toy_eval",
              eval_num_prompts=32, eval_num_seeds=4, num_threads=1, seed=0, diversity_lambda=0.0)

#: name -> (settings over COMMON, epochs per eval chunk). "new" is read from the study spec (its one home).
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


def run_recipe(name: str, settings: dict, chunk: int, budget_s: float, out_root: Path) -> pd.DataFrame:
    out = out_root / name
    if (out / FINISHED).is_file():  # finished by an earlier invocation: reuse it if it is this recipe
        saved = read_config(out)
        want = {**COMMON, **settings, "eval_every": chunk}
        if all(saved.get(k) == v for k, v in want.items()):
            print(f"{name}: reusing the finished run in {out}", flush=True)
            return curve(load_metrics(out), out)
        raise SystemExit(f"error: {out} holds another recipe's run; delete it to re-run {name}")
    epochs = 0
    while True:
        epochs += chunk
        cfg = {**COMMON, **settings, "eval_every": chunk, "num_epochs": epochs, "output_dir": str(out)}
        ev = curve(train_chunk(cfg, out), out)
        print(f"{name}: epoch {epochs}, cpu {ev['cpu_s'].iloc[-1]:.0f}s, gain {ev['gain'].iloc[-1]:+.3f}", flush=True)
        if plateau_row(ev) is not None or ev["cpu_s"].iloc[-1] >= budget_s:
            (out / FINISHED).write_text(json.dumps({"epochs": epochs}) + "\n")
            return ev


def summarise(curves: dict[str, pd.DataFrame], reference: str = "new") -> pd.DataFrame:
    rows = []
    t_ref = None
    ends = {}
    for name, ev in curves.items():
        i = plateau_row(ev)
        end = ev.iloc[i] if i is not None else ev.iloc[-1]
        ends[name] = (i, end)
        if name == reference and i is not None:
            t_ref = end["cpu_s"]
    for name, ev in curves.items():
        i, end = ends[name]
        final = end["gain"]

        def time_to(share):
            hit = ev[(ev["gain"] >= share * final) & (ev["epoch"] > 0)] if final > 0 else ev.iloc[0:0]
            return hit["cpu_s"].iloc[0] if len(hit) else float("nan")

        at_ref = float("nan")
        if t_ref is not None:
            before = ev[ev["cpu_s"] <= t_ref]
            at_ref = before["gain"].iloc[-1] if len(before) > 1 else float("nan")
        rows.append({
            "recipe": name, "plateau": "yes" if i is not None else "no (budget)", "epoch": int(end["epoch"]),
            "cpu_s": end["cpu_s"], "final_gain": final, "final_z": end["z"], "best_gain": ev["gain"].max(),
            "cpu_s_to_50%": time_to(0.5), "cpu_s_to_90%": time_to(0.9),
            "gain_at_new_plateau_time": at_ref,
            "gain_per_cpu_min": final / (end["cpu_s"] / 60) if end["cpu_s"] > 0 else float("nan"),
            "cross_div_clip": end.get("cross_div_clip"), "retrieval_acc": end.get("retrieval_acc"),
            "judge_all": end.get("judge_all"), "judge_distinct": end.get("judge_distinct", float("nan")),
            "base_reward": ev["reward_mean"].iloc[0],
        })
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-min", type=float, default=10.0, help="training CPU-minutes per recipe (cap)")
    ap.add_argument("--recipes", nargs="+", default=["current", "trl", "ddpo-pytorch", "new"])
    ap.add_argument("--jobs", type=int, default=2, help="recipes trained at once (one thread each)")
    ap.add_argument("--out", default="runs/time_to_plateau")
    ap.add_argument("--results", default="results/time_to_plateau", help="where the table is written")
    args = ap.parse_args()
    recipes = {**RECIPES, "new": new_recipe()}
    unknown = [r for r in args.recipes if r not in recipes]
    if unknown:
        raise SystemExit(f"error: unknown recipe(s) {unknown}; known: {sorted(recipes)}")
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {r: pool.submit(run_recipe, r, *recipes[r], args.budget_min * 60, out_root) for r in args.recipes}
        curves = {r: f.result() for r, f in futures.items()}
    table = summarise(curves)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    table.to_csv(results / "time_to_plateau.csv", index=False, float_format="%.4g")
    pd.concat([ev.assign(recipe=r) for r, ev in curves.items()]).to_csv(results / "curves.csv", index=False,
                                                                       float_format="%.5g")
    text = table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    (results / "time_to_plateau.md").write_text("```\n" + text + "\n```\n")
    print(text)
    per_min = dict(zip(table["recipe"], table["gain_per_cpu_min"]))
    if "new" in per_min:
        ratios = [f"new/{label} = {per_min['new'] / per_min[r]:.2f}" if per_min.get(r, 0) > 0
                  else f"new/{label} = n/a ({r} did not gain)"
                  for r, label in (("current", "current"), ("trl", "TRL"), ("ddpo-pytorch", "ddpo-pytorch"))
                  if r in per_min]
        print("gain per CPU-minute, " + "; ".join(ratios))


if __name__ == "__main__":
    main()
