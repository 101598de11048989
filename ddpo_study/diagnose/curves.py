"""The reward-diversity curves from the base model to the tuned one.

:func:`scale_sweep`: the tuned update scaled from 0 to 1 (the LoRA's adapter scale; a full or progressive UNet's
or SD3 transformer's weights interpolated, ``base + s * (tuned - base)``): a collapse that appears gradually with
the scale is a property of the learned update. :func:`switch_sweep`: the base denoiser for the first ``k`` denoising
steps and the tuned one for the rest (:func:`~ddpo_study.diagnose.sampling.sample_switched`; for an SD3-type base,
the stock pipeline's Euler ODE with the transformer swapped after step ``k``,
:func:`~ddpo_study.diagnose.sampling.sample_switched_flow`). :func:`fig_tradeoff` draws both
curves; :func:`fig_scale_images` the images of the scale sweep.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..report import image_axis, new_figure, styled, tile, wrap_label
from .sampling import Diagnosis

#: What a curve point keeps of :meth:`Diagnosis.measure` (the judge's only on toy prompts).
CURVE_METRICS = ("reward_mean", "cross_div_clip", "retrieval_acc", "within_div_clip", "judge_all", "judge_distinct",
                 "judge_distinct_frac")


def _curve_row(dx: Diagnosis, name: str, **keys) -> dict[str, Any]:
    m = dx.measure(name)
    return {**keys, **{k: m[k] for k in CURVE_METRICS if k in m}}


def scaled_name(scale: float) -> str:
    """The name under which :func:`scale_sweep` keeps the images at ``scale`` (1 is the tuned model itself)."""
    return "tuned/shared" if float(scale) == 1.0 else f"scale/{float(scale):g}"


def scale_sweep(dx: Diagnosis, scales: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> pd.DataFrame:
    """Reward and diversity (same seeds for every prompt) with the tuned update scaled by each of ``scales``."""
    rows = []
    for s in scales:
        s, name = float(s), scaled_name(s)
        if s == 1.0:
            dx.tuned_images("shared")
        elif name not in dx.images:
            with dx.scaled(s) as unet:
                dx.sample(name, unet=unet)
        rows.append(_curve_row(dx, name, scale=s))
    return pd.DataFrame(rows)


@styled
def fig_scale_images(dx: Diagnosis, scales: Sequence[float], seed_column: int = 0, max_prompts: int = 8,
                     title: str = ""):
    """Rows: the tuned update at each of ``scales`` (as :func:`scale_sweep` sampled them); columns: prompts, at the
    shared seed ``EVAL_SEED_BASE + seed_column``."""
    images = np.stack([dx.images[scaled_name(s)][:max_prompts, seed_column] for s in scales])
    k, p, h, w = images.shape[:4]
    fig = new_figure(2.0 + 0.6 * p, 1.8 + 0.6 * k)
    ax = fig.add_subplot(1, 1, 1)
    image_axis(ax, tile(images), k, p, h, w)
    ax.set_yticklabels([f"scale {float(s):g}" for s in scales], fontsize=7)
    ax.set_xticklabels([wrap_label(pr, 24) for pr in dx.prompts[:max_prompts]], rotation=90, fontsize=5)
    seed = int(dx.seeds()[0, seed_column])
    ax.set_title(title or f"the tuned update scaled from the base (0) to as trained (1), seed {seed}")
    return fig


def default_switch_steps(num_steps: int) -> list[int]:
    """0, T/4, T/2, 3T/4 and T base-model steps (rounded, distinct)."""
    return sorted({round(num_steps * f) for f in (0, 0.25, 0.5, 0.75, 1.0)})


def switch_sweep(dx: Diagnosis, switch_steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Reward and diversity (same seeds for every prompt) with the base denoiser (UNet, or SD3 transformer: its ODE
    steps) for the first ``k`` denoising steps and the tuned one for the rest, for each ``k`` (0 = the tuned model,
    ``num_steps`` = the base)."""
    steps = default_switch_steps(dx.num_steps) if switch_steps is None else [int(k) for k in switch_steps]
    rows = []
    for k in steps:
        if k == 0:
            dx.tuned_images("shared")
            name = "tuned/shared"
        elif k == dx.num_steps:
            dx.base("shared")
            name = "base/shared"
        else:
            name = f"switch/{k}"
            dx.sample(name, unet=dx.tuned.unet, first_unet=dx.base_denoiser, switch_at=k)
        rows.append(_curve_row(dx, name, base_steps=k, base_fraction=k / dx.num_steps))
    return pd.DataFrame(rows)


def fig_tradeoff(scale: pd.DataFrame, switch: pd.DataFrame, title: str = ""):
    """Reward (x) against cross-prompt diversity and against prompt retrieval (y): the LoRA scale sweep and the
    base-for-the-first-k-steps sweep, both from the base model to the tuned one."""
    from matplotlib.figure import Figure

    from ..report import style

    with style():
        fig = Figure(figsize=(10, 4), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, metric, label in ((axes[0], "cross_div_clip", "cross-prompt diversity (CLIP), same seeds"),
                                  (axes[1], "retrieval_acc", "prompt retrieval accuracy")):
            for df, key, fmt, name, offset in ((scale, "scale", "o-", "tuned update scaled by s", (4, 4)),
                                               (switch, "base_steps", "s--", "base for the first k steps", (4, -10))):
                if df.empty:
                    continue
                ax.plot(df["reward_mean"], df[metric], fmt, label=name)
                for _, row in df.iterrows():
                    tag = f"s={row[key]:g}" if key == "scale" else f"k={int(row[key])}"
                    ax.annotate(tag, (row["reward_mean"], row[metric]), textcoords="offset points", xytext=offset,
                                fontsize=7)
            ax.set_xlabel("mean reward")
            ax.set_ylabel(label)
            lo, hi = ax.get_ylim()
            pad = max(hi - lo, 1e-3) * 0.1
            ax.set_ylim(lo - pad, hi + pad)  # the change, not the whole [0, 2] range
            ax.legend(loc="best")
        fig.suptitle(title or "reward-diversity trade-off: from the base model to the tuned one")
    return fig
