"""Every random draw of a training run, by name.

A draw of epoch ``e`` comes from ``numpy.random.default_rng([seed, e, stream])``, so a resumed run redraws
exactly what an uninterrupted one would, and two purposes never share a stream. The stream numbers are part of
the study's results (changing one changes every run), so they are fixed here:

* ``PROMPTS`` (0): the epoch's prompts and their sampling seeds (``train.epoch_prompts``);
* ``PPO_PASS`` (1 + i): PPO pass ``i`` of the epoch -- its sample order and timestep subsets;
* ``STEP_PROBE`` (99): the transitions on which the step controller measures each step;
* ``NFT_PASS`` (100 + i): DiffusionNFT's pass ``i`` -- its sample order, timesteps and forward-process noise;
* ``NFT_PROBE`` (198): the noised samples on which NFT's step probe measures each step;
* ``SDE_WINDOW`` (199): Flow-GRPO-Fast's window of SDE steps in the epoch's chains (``flow_sampler``).

Pass streams lie between the others, so ``inner_epochs`` is capped below ``STEP_PROBE - PPO_PASS``
(``MAX_INNER_EPOCHS``; the config refuses more), and NFT's passes end where its probe's stream begins.
"""

from __future__ import annotations

import numpy as np
import torch

PROMPTS = 0
PPO_PASS = 1
STEP_PROBE = 99
MAX_INNER_EPOCHS = STEP_PROBE - PPO_PASS
NFT_PASS = 100
NFT_PROBE = NFT_PASS + MAX_INNER_EPOCHS
SDE_WINDOW = NFT_PROBE + 1


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """The reproducible generator of ``stream`` in epoch ``epoch`` of the run with seed ``seed``."""
    return np.random.default_rng([seed, epoch, stream])


def epoch_torch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU torch generator seeded from :func:`epoch_rng` (the same on every process)."""
    return torch.Generator().manual_seed(int(epoch_rng(seed, epoch, stream).integers(2**62)))
