"""Reward normalisation into advantages: per prompt (DDPO's default) or over the whole batch.

Definition (per-prompt tracking). For each epoch's batch of ``(prompt, reward)`` pairs, for each distinct
prompt ``p`` with batch rewards ``r_p``:

1. append ``r_p`` to ``buffer[p]``, a FIFO of the ``buffer_size`` most recent rewards of ``p`` (older ones are
   evicted), *before* computing statistics, so the current rewards count;
2. if ``len(buffer[p]) < min_count``: ``mu, sigma = mean(all rewards of the batch), std(all rewards of the batch)``
   (too few samples of ``p`` yet for a per-prompt baseline);
   else: ``mu, sigma = mean(buffer[p]), std(buffer[p])``;
3. ``A = (r_p - mu) / (sigma + 1e-6)``.

``std`` is the population standard deviation (numpy's default, ``ddof=0``). Normalising per prompt removes the
difference in attainable reward between prompts, so the policy is pushed toward what is better *for that
prompt*, not toward the easy prompts.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np

EPS = 1e-6


def global_advantages(rewards: Sequence[float] | np.ndarray) -> np.ndarray:
    """``(r - mean(r)) / (std(r) + 1e-6)`` over the whole batch (tracking off)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return (rewards - rewards.mean()) / (rewards.std() + EPS)


class PerPromptStatTracker:
    """Running per-prompt reward statistics; see the module docstring for the exact definition."""

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        if min_count > buffer_size:
            # The buffer could never reach min_count, so the per-prompt baseline would never be used.
            raise ValueError(f"min_count ({min_count}) must not exceed buffer_size ({buffer_size})")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: Sequence[float] | np.ndarray) -> np.ndarray:
        """Record ``rewards`` and return their advantages (float64 array aligned with ``prompts``)."""
        prompts = np.asarray(list(prompts), dtype=object)
        rewards = np.asarray(rewards, dtype=np.float64)
        if prompts.shape != rewards.shape:
            raise ValueError(f"{prompts.shape[0]} prompts but rewards of shape {rewards.shape}")
        advantages = np.empty_like(rewards)
        batch_mean, batch_std = rewards.mean(), rewards.std()
        for prompt in dict.fromkeys(prompts.tolist()):  # unique, in first-seen order
            mask = prompts == prompt
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(rewards[mask].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                mean, std = np.mean(buffer), np.std(buffer)
            advantages[mask] = (rewards[mask] - mean) / (std + EPS)
        return advantages

    def state_dict(self) -> dict[str, list[float]]:
        """The buffers as plain lists (JSON-serialisable, for checkpoints)."""
        return {prompt: list(buf) for prompt, buf in self.buffers.items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        """Restore buffers written by :meth:`state_dict` (replacing the current ones)."""
        self.buffers = {p: deque((float(v) for v in values), maxlen=self.buffer_size) for p, values in state.items()}
