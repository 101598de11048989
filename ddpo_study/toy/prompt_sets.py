"""Deterministic toy prompt sets: ``python -m ddpo_study.toy.prompt_sets`` writes ``data/prompts/toy_*.txt``.

All 2646 captions of the grammar are shuffled with a fixed seed. The first 64 become the held-out
evaluation set ``toy_eval``; the next 300 are ``toy_300`` and its first 30 are ``toy_30`` (so the small set
is nested in the large one, and the two training sets differ only in how many prompts they hold). A shuffle
is accepted only when every attribute value occurs in ``toy_30`` and in ``toy_eval``; otherwise the seed is
advanced, so the sets stay deterministic and balanced enough to read every attribute.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from . import world

N_EVAL, N_SMALL, N_LARGE = 64, 30, 300


def _covers(prompts: list[str]) -> bool:
    attrs = world.parse_many(prompts)
    sizes = {"shape": len(world.SHAPES), "size": len(world.SIZES), "position": len(world.POSITIONS),
             "color": len(world.COLORS), "bg": len(world.BACKGROUNDS)}
    return all(len(set(getattr(attrs, f).tolist())) == k for f, k in sizes.items())


def make_prompt_sets(seed: int = 0) -> dict[str, list[str]]:
    captions = world.caption(world.all_attribute_combinations())
    while True:
        order = captions[:]
        random.Random(seed).shuffle(order)
        sets = {
            "toy_eval": order[:N_EVAL],
            "toy_300": order[N_EVAL:N_EVAL + N_LARGE],
            "toy_30": order[N_EVAL:N_EVAL + N_SMALL],
        }
        if _covers(sets["toy_30"]) and _covers(sets["toy_eval"]):
            return sets
        seed += 1


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="write the toy prompt sets")
    ap.add_argument("--out", default="data/prompts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, prompts in make_prompt_sets(args.seed).items():
        (out / f"{name}.txt").write_text("\n".join(prompts) + "\n")
        print(f"{out / name}.txt: {len(prompts)} prompts")


if __name__ == "__main__":
    main()
