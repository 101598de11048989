"""A batch of sampled denoising chains and the small helpers both samplers share (DDIM's and the flow SDE's).

The family-neutral half of sampling: :class:`Trajectory` (what a policy-gradient objective needs from sampling),
:class:`LogProbOutput` (what re-scoring returns), and the step-index and dtype helpers. ``sampler`` (DDIM, SD-type
UNets) and ``flow_sampler`` (the flow SDE, SD3-type transformers) fill and read them; neither imports the other
for them. Conventions (``sampler``'s docstring): ``latents[:, j]`` is the input of step ``j``, ``latents[:, j + 1]``
its output, ``log_probs[:, j]`` scores that transition; every image has its own seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor


def _per_sample(values: Tensor, ndim: int) -> Tensor:
    """Reshape per-sample scalars ``(B,)`` to ``(B, 1, ..., 1)`` so they broadcast over a ``ndim``-d sample."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def _module_dtype(module) -> torch.dtype:
    dtype = getattr(module, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(module.parameters()).dtype


def _module_device(module) -> torch.device:
    return next(module.parameters()).device


@dataclass
class Trajectory:
    """A batch of sampled denoising chains: everything DDPO needs from sampling, and nothing else.

    ``T`` is the number of inference steps, ``B`` the number of images.
    """

    prompts: list[str]
    seeds: list[int]
    latents: Tensor  #: (B, T+1, C, h, w): x_T, ..., x_0 (``latents[:, j]`` is the input of step j)
    log_probs: Tensor  #: (B, T) float32: log p(latents[:, j+1] | latents[:, j]) under the sampling policy
    timesteps: Tensor  #: (T,) the UNet timestep of each step, shared by the batch
    prompt_embeds: Tensor  #: (B, L, D) text-encoder output for each prompt
    negative_prompt_embeds: Tensor  #: (B, L, D) text-encoder output for "" (the CFG unconditional branch)
    images: Tensor  #: (B, 3, H, W) float in [0, 1], the decoded x_0
    guidance_scale: float
    eta: float  #: the step's noise scale: DDIM's eta, or the flow SDE's noise level (``flow_sampler``)
    pooled_prompt_embeds: Tensor | None = None  #: (B, D) SD3-type pipelines' pooled text embeddings (else None)
    negative_pooled_prompt_embeds: Tensor | None = None  #: (B, D) the same for "" (CFG's unconditional branch)
    train_steps: Tensor | None = None  #: the only steps with noise, which alone train (Flow-GRPO-Fast); None: all

    _BATCHED = ("latents", "log_probs", "prompt_embeds", "negative_prompt_embeds", "images", "pooled_prompt_embeds",
                "negative_pooled_prompt_embeds")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> "Trajectory":
        """The sub-batch at ``index`` (an int keeps a batch of one); timesteps and settings are shared."""
        if isinstance(index, int):
            index = [index]
        if isinstance(index, slice):
            positions = list(range(len(self)))[index]
        else:
            positions = [int(i) for i in torch.as_tensor(index).reshape(-1).tolist()]
        rows = torch.as_tensor(positions, dtype=torch.long)
        picked = {name: getattr(self, name)[rows.to(getattr(self, name).device)] for name in self._BATCHED
                  if getattr(self, name) is not None}
        return replace(
            self,
            prompts=[self.prompts[i] for i in positions],
            seeds=[self.seeds[i] for i in positions],
            **picked,
        )

    @staticmethod
    def cat(trajectories: Sequence["Trajectory"]) -> "Trajectory":
        """Concatenate along the batch; all parts must share timesteps, guidance scale and eta."""
        first = trajectories[0]
        for other in trajectories[1:]:
            if not torch.equal(other.timesteps.cpu(), first.timesteps.cpu()):
                raise ValueError("cannot concatenate trajectories with different timesteps")
            if (other.guidance_scale, other.eta) != (first.guidance_scale, first.eta):
                raise ValueError("cannot concatenate trajectories with different guidance_scale/eta")
        return replace(
            first,
            prompts=[p for tr in trajectories for p in tr.prompts],
            seeds=[s for tr in trajectories for s in tr.seeds],
            **{name: torch.cat([getattr(tr, name) for tr in trajectories]) for name in Trajectory._BATCHED
               if getattr(first, name) is not None},
        )


def _as_step_index(step_indices: int | Sequence[int] | Tensor, batch_size: int) -> tuple[Tensor, tuple[int, ...]]:
    """Broadcast step indices to ``(B, K)`` and remember the output shape: ``(B,)`` for an int, else ``(B, K)``."""
    index = torch.as_tensor(step_indices, dtype=torch.long)
    if index.ndim == 0:
        return index.expand(batch_size, 1), (batch_size,)
    if index.ndim == 1:
        index = index.unsqueeze(0).expand(batch_size, -1)
    if index.ndim != 2 or index.shape[0] != batch_size:
        raise ValueError(f"step_indices must be an int, (K,) or ({batch_size}, K); got {tuple(index.shape)}")
    return index, tuple(index.shape)


@dataclass
class LogProbOutput:
    """What :func:`recompute_log_probs` returns (shaped like the step indices, see there)."""

    log_prob: Tensor  #: log p_theta(x_{j+1} | x_j) under the current UNet, with gradients
    kl: Tensor | None = None  #: KL(pi_theta || pi_ref) at the same states, when a reference UNet was given
