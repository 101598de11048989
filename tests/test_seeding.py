"""The run's random streams: fixed numbers (they are part of the results), distinct purposes, reproducible."""

import numpy as np
import torch

from ddpo_study import seeding


def test_the_streams_are_the_ones_the_study_ran_with():
    # changing one of these changes every run of the study: the numbers are pinned, not just distinct
    assert (seeding.PROMPTS, seeding.PPO_PASS, seeding.STEP_PROBE) == (0, 1, 99)
    assert (seeding.NFT_PASS, seeding.NFT_PROBE) == (100, 198)  # NFT's passes 100..197 stop below its probe
    assert seeding.MAX_INNER_EPOCHS == 98  # pass streams 1..98 never reach the probe's 99


def test_a_stream_is_a_function_of_seed_epoch_and_purpose():
    draw = lambda *key: seeding.epoch_rng(*key).integers(2**62)  # noqa: E731
    assert draw(3, 7, seeding.PROMPTS) == draw(3, 7, seeding.PROMPTS)
    assert len({draw(3, 7, s) for s in (seeding.PROMPTS, seeding.PPO_PASS, seeding.STEP_PROBE)}) == 3
    assert draw(3, 7, 0) != draw(3, 8, 0) and draw(3, 7, 0) != draw(4, 7, 0)
    assert draw(3, 7, 0) == np.random.default_rng([3, 7, 0]).integers(2**62)
    a, b = (seeding.epoch_torch_generator(3, 7, seeding.STEP_PROBE) for _ in range(2))
    assert torch.equal(torch.randperm(10, generator=a), torch.randperm(10, generator=b))
