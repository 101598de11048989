"""The measurements behind a verdict, its thresholds, and the verdict itself.

:func:`symptom` (cross-prompt diversity and prompt retrieval of base and tuned, in both seed modes),
:func:`loading_checks` ("is the LoRA even loaded?"), :func:`reproduction_check` (for one of our run folders: is the
model loaded the one its training evaluated?), and :func:`verdict`, which turns the symptom and the loading checks
into one line by the thresholds below (:data:`THRESHOLDS`, :func:`thresholds_table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..collapse import (
    BROKE,
    COLLAPSE_DIVERSITY_RATIO,
    COLLAPSE_RETRIEVAL_DROP,
    KEPT,
    MAXIMISED,
    REWARD_CHANGE_Z,
    collapse_kind,
)
from ..config import EVAL_SEED_BASE
from .loading import LORA_KINDS, TunedModelError, _first_line
from .sampling import SEED_MODES, Diagnosis, run_sampling

#: Tuned and base images whose mean absolute difference at the same prompts and seeds is below this many 8-bit
#: levels are "the same outputs": the tuned weights are not in effect.
SAME_OUTPUT_LEVELS = 0.5
#: Re-sampled eval images within this many 8-bit levels (mean) of the saved ones are the evaluated model's.
REPRODUCED_LEVELS = 1.0
#: Retrieval at most this multiple of chance (1 / number of prompts): the prompts are ignored.
IGNORED_RETRIEVAL_FACTOR = 2.0
#: The base model's cross-prompt diversity with shared seeds below this fraction of that with a seed per prompt:
#: the shared noise itself makes images of different prompts alike.
SHARED_NOISE_RATIO = 0.8

THRESHOLDS = {
    "SAME_OUTPUT_LEVELS": (SAME_OUTPUT_LEVELS, "mean |tuned - base| (8-bit levels, same prompts and seeds) below "
                           "which the tuned model's outputs equal the base's"),
    "COLLAPSE_DIVERSITY_RATIO": (COLLAPSE_DIVERSITY_RATIO, "tuned / base cross-prompt CLIP diversity at the same "
                                 "seed below which the tuned model collapsed"),
    "COLLAPSE_RETRIEVAL_DROP": (COLLAPSE_RETRIEVAL_DROP, "drop of prompt retrieval accuracy (base - tuned) from "
                                "which the tuned model collapsed"),
    "IGNORED_RETRIEVAL_FACTOR": (IGNORED_RETRIEVAL_FACTOR, "retrieval at most this multiple of chance: the prompts "
                                 "are ignored"),
    "REWARD_CHANGE_Z": (REWARD_CHANGE_Z, "|z| of the paired reward change (clustered by prompt) from which a "
                        "collapse maximised the reward (z > 0) or broke the model (z < 0)"),
    "SHARED_NOISE_RATIO": (SHARED_NOISE_RATIO, "base diversity with shared seeds / with a seed per prompt below "
                           "which the shared noise alone makes prompts look alike"),
    "REPRODUCED_LEVELS": (REPRODUCED_LEVELS, "mean |re-sampled - saved| eval images of a run folder (8-bit levels) "
                          "below which the loaded model is the one its training evaluated"),
}


SYMPTOM_COLUMNS = ("reward_mean", "cross_div_clip", "cross_div_pixel", "within_div_clip", "retrieval_acc",
                   "retrieval_chance", "clip_score")


def symptom(dx: Diagnosis) -> pd.DataFrame:
    """Base and tuned, with the same seeds for every prompt and with a seed per prompt: reward, cross- and
    within-prompt diversity, prompt retrieval; ``cross_div_vs_base`` is tuned / base at the same seed mode, and
    ``reward_change`` / ``reward_change_z`` the tuned - base reward paired image by image (same prompts and seeds),
    its z clustered by prompt (:func:`ddpo_study.report.stats.paired_gain`)."""
    from ..report.stats import paired_gain

    rows = []
    for mode in SEED_MODES:
        dx.base(mode), dx.tuned_images(mode)
        base = dx.measure(f"base/{mode}")
        for model in ("base", "tuned"):
            m = dx.measure(f"{model}/{mode}")
            row = {"model": model, "seeds": SEED_MODES[mode], **{k: m.get(k, float("nan")) for k in SYMPTOM_COLUMNS}}
            row["cross_div_vs_base"] = m["cross_div_clip"] / base["cross_div_clip"] if base["cross_div_clip"] else float("nan")
            change = paired_gain(dx.rewards[f"base/{mode}"], dx.rewards[f"{model}/{mode}"])
            row["reward_change"], row["reward_change_z"] = change["gain"], change["z"]
            rows.append(row)
    return pd.DataFrame(rows)


def loading_checks(dx: Diagnosis) -> pd.DataFrame:
    """"Is the LoRA even loaded?": one row per check with its value, the threshold and ``ok`` (True/False/None)."""
    from ..finetune import param_distance_from_base, snapshot_base_state

    tuned, rows = dx.tuned, []
    if tuned.kind in LORA_KINDS:
        rows.append({"check": "layers carrying the LoRA", "value": float(tuned.lora_layers), "threshold": "> 0",
                     "ok": tuned.lora_layers > 0})
    try:
        dist = param_distance_from_base(tuned.unet, snapshot_base_state(dx.base_denoiser))
    except (KeyError, RuntimeError) as err:
        what = "SD3 transformer" if dx.flow else "UNet"
        raise TunedModelError(f"the tuned {what} does not have the base {what}'s parameters ({_first_line(err)}): "
                              "it was not fine-tuned from this base model") from err
    rows.append({"check": "weight distance from base (L2, effective weights)", "value": dist, "threshold": "> 0",
                 "ok": dist > 0})
    base, tuned_img = dx.base("shared"), dx.tuned_images("shared")
    diff = np.abs(tuned_img.astype(np.int16) - base.astype(np.int16))
    rows.append({"check": "mean |tuned - base| at the same prompts and seeds (8-bit levels)", "value": float(diff.mean()),
                 "threshold": f"> {SAME_OUTPUT_LEVELS}", "ok": bool(diff.mean() > SAME_OUTPUT_LEVELS)})
    rows.append({"check": "identical pixels, tuned vs base", "value": float((diff == 0).mean()), "threshold": "(info)",
                 "ok": None})
    if tuned.adapter is not None and tuned.lora_on_base:
        with dx.scaled(0.0) as unet:
            zero = dx.sample("scale/0", unet=unet)
        d0 = int(np.abs(zero.astype(np.int16) - base.astype(np.int16)).max())
        rows.append({"check": "LoRA scale 0 reproduces the base (max |diff|, 8-bit levels)", "value": float(d0),
                     "threshold": "== 0", "ok": d0 == 0})
    return pd.DataFrame(rows)


def reproduction_check(dx: Diagnosis, max_prompts: int = 8) -> pd.DataFrame:
    """A run folder's saved eval images, re-sampled at their prompts and seeds and compared: the base model with
    epoch 0, the tuned model with the last saved eval at or before its weights' epoch.

    Columns: model, epoch, images, mean_abs_diff and max_abs_diff (8-bit levels), identical_fraction (pixels), and
    a verdict: ``match`` when the mean difference is below :data:`REPRODUCED_LEVELS`; large differences point at
    loading, not training. ``note`` warns when the weights are not of the epoch of that eval (e.g. an unfinished
    run between checkpoints). A tuned model that is not a run folder, a run without saved eval images, or a
    diagnosis at other sampling settings than the run's: one row saying why there is nothing to compare.
    """
    from ..report.results import cell_eval_images
    from ..rundir import eval_epochs

    tuned, cfg = dx.tuned, dx.tuned.run_config
    if cfg is None:
        return _nothing_to_reproduce("not a run folder: no saved eval images to compare with")
    epochs = eval_epochs(tuned.source)
    if not epochs:  # a grid commits eval images for some cells only (its spec's keep_eval)
        return _nothing_to_reproduce("no saved eval images to compare with (this cell's were not committed: the "
                                     "grid spec's keep_eval)")
    keys = ("num_steps", "guidance_scale") if dx.flow else ("num_steps", "guidance_scale", "eta")
    ours = tuple(getattr(dx, k) for k in keys)
    ran = run_sampling(cfg, dx.flow)
    theirs = tuple(type(v)(ran.get(k, v)) for k, v in zip(keys, ours))
    if ours != theirs:
        names = "(steps, guidance)" if dx.flow else "(steps, guidance, eta)"
        return _nothing_to_reproduce(f"sampled with {names} {ours}, the run evaluated with {theirs}")
    saved = [e for e in epochs if e <= tuned.epoch]
    targets = [("base", 0, dx.base_denoiser)] + ([("tuned", saved[-1], tuned.unet)] if saved else [])
    rows = []
    for which, epoch, unet in targets:
        if epoch not in epochs:
            continue
        ref, prompts = cell_eval_images(tuned.source, epoch)
        ref = ref[:max_prompts]
        new = dx.draw(prompts[:max_prompts], np.tile(EVAL_SEED_BASE + np.arange(ref.shape[1]), (len(ref), 1)), unet)
        diff = np.abs(new.astype(np.int16) - ref.astype(np.int16))
        note = ""
        if which == "tuned" and epoch != tuned.epoch:
            note = f"the weights are of epoch {tuned.epoch}, the last saved eval at or before it of epoch {epoch}"
        rows.append({"model": which, "epoch": epoch, "images": int(ref.shape[0] * ref.shape[1]),
                     "mean_abs_diff": float(diff.mean()), "max_abs_diff": int(diff.max()),
                     "identical_fraction": float((diff == 0).mean()),
                     "verdict": "match" if diff.mean() < REPRODUCED_LEVELS else "MISMATCH: not the evaluated model",
                     "note": note})
    return pd.DataFrame(rows)


def _nothing_to_reproduce(why: str) -> pd.DataFrame:
    return pd.DataFrame([{"model": "", "epoch": float("nan"), "images": 0, "verdict": why}])


@dataclass
class Verdict:
    label: str  #: ``adapter not applied``, ``loaded and collapsed``, ``same noise for every prompt``, ``loaded, no collapse``
    line: str  #: the label with the numbers behind it
    warnings: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.line + "".join(f" Warning: {w}" for w in self.warnings)


def verdict(symptom_table: pd.DataFrame, checks: pd.DataFrame) -> Verdict:
    """The diagnosis in one line, from :func:`symptom` and :func:`loading_checks` and the module's thresholds."""
    sym = symptom_table.set_index(["model", "seeds"])
    shared, per_prompt = SEED_MODES["shared"], SEED_MODES["per_prompt"]
    b_same, t_same = sym.loc[("base", shared)], sym.loc[("tuned", shared)]
    b_diff, t_diff = sym.loc[("base", per_prompt)], sym.loc[("tuned", per_prompt)]
    check = {row["check"]: row for _, row in checks.iterrows()}
    warnings = []
    layers = check.get("layers carrying the LoRA")
    if layers is not None and not layers["ok"]:
        return Verdict("adapter not applied", "adapter not applied: no LoRA tensor matched a layer of the base's denoiser "
                       "(0 layers carry it), so the tuned model is the base model", warnings)
    dist = next(row for name, row in check.items() if name.startswith("weight distance"))
    out = next(row for name, row in check.items() if name.startswith("mean |tuned - base|"))
    if not dist["ok"]:
        return Verdict("adapter not applied", "tuned == base: the tuned weights are the base weights (weight "
                       f"distance 0, mean image difference {out['value']:.2f} levels): the weights did not load or "
                       "were never trained", warnings)
    if not out["ok"]:
        return Verdict("adapter not applied", f"adapter not applied (outputs equal base): mean |tuned - base| "
                       f"{out['value']:.2f} levels at the same seeds (threshold {SAME_OUTPUT_LEVELS}), although the "
                       f"weights moved {dist['value']:.3g} (L2)", warnings)
    zero = next((row for name, row in check.items() if name.startswith("LoRA scale 0")), None)
    if zero is not None and not zero["ok"]:
        warnings.append(f"LoRA scale 0 differs from the base by up to {zero['value']:.0f} levels: the weights under "
                        "the adapter are not the base model given")
    r_same, r_diff = t_same["cross_div_vs_base"], t_diff["cross_div_vs_base"]
    chance = float(b_same["retrieval_chance"])
    retr = (f"prompt retrieval {b_same['retrieval_acc']:.2f} -> {t_same['retrieval_acc']:.2f} (chance {chance:.2f})")
    numbers = (f"cross-prompt diversity {r_same:.2f} of base at the same seed, {r_diff:.2f} with per-prompt seeds; "
               f"{retr}")
    drop = float(b_same["retrieval_acc"] - t_same["retrieval_acc"])
    kind = collapse_kind(float(r_same), drop, float(t_same.get("reward_change_z", float("nan"))))
    if kind not in ("", KEPT):
        ignored = t_same["retrieval_acc"] <= IGNORED_RETRIEVAL_FACTOR * chance
        tail = ": the prompts are ignored" if ignored else ""
        if r_diff >= COLLAPSE_DIVERSITY_RATIO and r_same < COLLAPSE_DIVERSITY_RATIO:
            tail += (" (with a seed per prompt the images still differ, so they follow the noise rather than the "
                     "prompt; the same seed for every prompt shows it)")
        return Verdict("loaded and collapsed", f"loaded and collapsed: {numbers}{tail}{_reward_kind(kind, b_same, t_same)}",
                       warnings)
    noise_ratio = b_same["cross_div_clip"] / b_diff["cross_div_clip"] if b_diff["cross_div_clip"] else float("nan")
    if noise_ratio < SHARED_NOISE_RATIO:
        return Verdict("same noise for every prompt", "same noise for every prompt: the base model's images of "
                       f"different prompts at one seed are already alike ({noise_ratio:.2f} of their diversity with a "
                       f"seed per prompt) and the tuned model is no worse ({numbers}): sample each prompt from its "
                       "own seed", warnings)
    return Verdict("loaded, no collapse", f"loaded, no collapse: {numbers}", warnings)


def _reward_kind(kind: str, base: pd.Series, tuned: pd.Series) -> str:
    """The collapse's kind (:func:`ddpo_study.collapse.collapse_kind`) with the paired reward change behind it."""
    z = tuned.get("reward_change_z", float("nan"))
    if not np.isfinite(z):
        return ""
    rewards = (f"; reward {base['reward_mean']:.2f} -> {tuned['reward_mean']:.2f} "
               f"(change {tuned['reward_change']:+.2f}, z {z:.1f} clustered by prompt)")
    return rewards + {MAXIMISED: ": the collapse came with a higher reward",
                      BROKE: ": the reward fell, so the model broke rather than maximised the reward"}.get(
                          kind, ": no reward change detected")


def thresholds_table() -> pd.DataFrame:
    return pd.DataFrame([{"threshold": k, "value": v, "meaning": m} for k, (v, m) in THRESHOLDS.items()])
