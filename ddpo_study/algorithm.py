"""The seam of the training loop: a run is an *objective* optimised on samples of a *sampler family*.

``train.train_epoch`` is the same for every algorithm (sample -> reward -> advantages -> update); what changes
between DDPO, Flow-GRPO and DiffusionNFT is hidden behind two small interfaces:

* :class:`SamplerFamily` -- how a family of models samples and scores its own transitions. Today: DDIM with
  per-step Gaussian log-probs on an epsilon-prediction UNet (``sampler.DDIMFamily``, SD-type pipelines). Next:
  the flow-matching SDE/ODE on an SD3-type transformer (Flow-GRPO's ``sde_step_with_logprob``), whose step is
  Gaussian too, so the same calls apply.
* :class:`Objective` -- what one epoch's update does with a batch of samples and their advantages. Today:
  PPO-clip on per-step log-probs with the step controller (``ppo.PPO``: DDPO, and Flow-GRPO on the flow family).
  Next: DiffusionNFT's forward-process objective, which needs no log-probs -- it reads the batch's final latents
  and prompts, keeps its own soft-updated "old" policy between epochs (``state_dict`` for resume) and measures
  its own policy step for the controller.

What crosses the seam (read from flow_grpo's ``train_sd3.py`` and DiffusionNFT's ``train_nft_sd3.py``): a batch
of samples (a :class:`~ddpo_study.sampler.Trajectory`: latents per step, log-probs, timesteps, text embeddings,
decoded images), per-sample advantages aligned with it, the policy (trainable parameters, optimizer, reference
for a KL term) and the process layout. Groups (several images per prompt) are drawn before sampling
(``train.epoch_prompts``) and normalised by the stat tracker before the update, so neither interface sees them.
The driver (eval, checkpoints, logging, resume) never looks behind the seam.

``ALGORITHMS`` is the registry a config's algorithm name is looked up in; a name maps to its objective, and the
family comes from the model (:func:`family_for`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
from torch import Tensor, nn

if TYPE_CHECKING:  # annotations only: the implementations import this module
    from .config import DDPOConfig
    from .sampler import LogProbOutput, Trajectory


class SamplerFamily(Protocol):
    """How a model family samples, and scores its own transitions (everything model-specific of an epoch)."""

    name: str

    def denoiser(self, pipe) -> nn.Module:
        """The network the policy trains (``pipe.unet``; ``pipe.transformer`` for SD3-type pipelines)."""

    def sample(self, pipe, denoiser, prompts: Sequence[str], seeds: Sequence[int], cfg: "DDPOConfig",
               progress: bool = False) -> "Trajectory":
        """Training samples: one chain per ``(prompt, seed)`` with what the objective needs (latents, log-probs)."""

    def generate(self, pipe, denoiser, prompts: Sequence[str], seeds: Sequence[int], cfg: "DDPOConfig") -> Tensor:
        """Eval images ``(B, 3, H, W)`` in [0, 1], sampled as the stock pipeline samples (per-image seeds)."""

    def log_probs(self, denoiser, pipe, batch: "Trajectory", step_index: Tensor,
                  reference=None) -> "LogProbOutput":
        """``log p_theta`` of the stored transitions at ``step_index`` ``(B, K)``, with gradients, and the KL to
        ``reference`` at the same states when one is given."""

    def step_outputs(self, denoiser, pipe, batch: "Trajectory", step_index: Tensor) -> Tensor:
        """The policy's (guided) output at the stored transitions ``step_index`` ``(B, 1)``, without gradients."""

    def step_kl(self, pipe, batch: "Trajectory", step_index: Tensor, before: Tensor, after: Tensor) -> Tensor:
        """``KL(pi_before || pi_after)`` per transition, from two ``step_outputs`` of the same transitions."""


class Objective(Protocol):
    """One epoch's update of the policy from a batch of samples and their advantages."""

    name: str

    def update(self, state: Any, batch: "Trajectory", advantages: np.ndarray, epoch: int) -> dict[str, float]:
        """Optimizer steps on ``batch`` (this process's share; ``advantages`` aligned with it); returns the epoch
        row's ``train_*`` columns. ``state`` is the run's :class:`~ddpo_study.train.RunState`."""


def _ppo(cfg: "DDPOConfig", family: SamplerFamily) -> Objective:
    from .ppo import PPO

    return PPO(cfg, family)


#: Algorithm name (``config.ALGORITHMS``) -> (objective factory ``(cfg, family) -> Objective``, the sampler family
#: it trains). DDPO and Flow-GRPO are the same objective, PPO-clip on per-step log-probs, on two families.
ALGORITHMS = {"ddpo": (_ppo, "ddim"), "flow_grpo": (_ppo, "flow")}


def family_for(pipe) -> SamplerFamily:
    """The sampler family of a loaded pipeline: DDIM with log-probs for a UNet (SD-type) pipeline, the flow SDE
    for a transformer (SD3-type) one."""
    from .flow_sampler import FlowFamily
    from .sampler import DDIMFamily

    if getattr(pipe, "unet", None) is not None:
        return DDIMFamily()
    if getattr(pipe, "transformer", None) is not None:
        return FlowFamily()
    raise ValueError(f"no sampler family for a {type(pipe).__name__} (needs a UNet or an SD3 transformer)")


def make_objective(algorithm: str, cfg: "DDPOConfig", family: SamplerFamily) -> Objective:
    """The objective registered as ``algorithm`` for ``family`` (one clear error for an unknown name or a model
    of the wrong family, e.g. Flow-GRPO on an SD-type UNet)."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
    factory, family_name = ALGORITHMS[algorithm]
    if family.name != family_name:
        kinds = {"ddim": "an SD-type (UNet, DDIM)", "flow": "an SD3-type (flow-matching transformer)"}
        raise ValueError(f"algorithm {algorithm!r} trains {kinds[family_name]} model; this model is "
                         f"{kinds.get(family.name, family.name)}")
    return factory(cfg, family)
