"""The seam of the training loop: a run is an *objective* optimised on samples of a *sampler family*.

``train.train_epoch`` is the same for every algorithm (sample -> reward -> advantages -> update); what changes
between DDPO, Flow-GRPO and DiffusionNFT is hidden behind two small interfaces:

* :class:`SamplerFamily` -- how a family of models samples and scores its own transitions: DDIM with per-step
  Gaussian log-probs on an epsilon-prediction UNet (``sampler.DDIMFamily``, SD-type pipelines) and the
  flow-matching SDE/ODE on an SD3-type transformer (``flow_sampler.FlowFamily``, Flow-GRPO's step), both also with
  their forward process ``x_t = alpha_t x_0 + sigma_t eps`` for objectives that train on it.
* :class:`Objective` -- what one epoch's update does with a batch of samples and their advantages: PPO-clip on
  per-step log-probs with the step controller (``ppo.PPO``: DDPO, and Flow-GRPO on the flow family), and
  DiffusionNFT's forward-process objective (``nft.NFT``, on either family), which needs no log-probs -- it reads
  the batch's final latents and prompts, samples from its own soft-updated "old" policy (``sampling``), keeps it
  between epochs (``state_dict`` for resume) and measures its own policy step for the controller.

What crosses the seam (read from flow_grpo's ``train_sd3.py`` and DiffusionNFT's ``train_nft_sd3.py``): a batch
of samples (a :class:`~ddpo_study.trajectory.Trajectory`: latents per step, log-probs, timesteps, text embeddings,
decoded images), per-sample advantages aligned with it, the policy (trainable parameters, optimizer, reference
for a KL term) and the process layout. Groups (several images per prompt) are drawn before sampling
(``train.epoch_prompts``) and normalised by the stat tracker before the update, so neither interface sees them.
The driver (eval, checkpoints, logging, resume) never looks behind the seam.

``ALGORITHMS`` is the registry a config's algorithm name is looked up in; a name maps to its objective and the
families it can train, and the family comes from the model (:func:`family_for`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np
from torch import Tensor, nn

if TYPE_CHECKING:  # annotations only: the implementations import this module
    from .config import DDPOConfig
    from .trajectory import LogProbOutput, Trajectory


class SamplerFamily(Protocol):
    """How a model family samples, and scores its own transitions (everything model-specific of an epoch)."""

    name: str

    def denoiser(self, pipe) -> nn.Module:
        """The network the policy trains (``pipe.unet``; ``pipe.transformer`` for SD3-type pipelines)."""

    def sample(self, pipe, denoiser, prompts: Sequence[str], seeds: Sequence[int], cfg: "DDPOConfig",
               progress: bool = False, epoch: int = 0) -> "Trajectory":
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

    # The forward process x_t = alpha_t x_0 + sigma_t eps at the family's timesteps, for objectives that train on
    # it rather than on the chain (DiffusionNFT): ``(N,)`` timesteps, one per row of ``x0`` / ``x_t``.

    def forward_coefficients(self, pipe, timesteps: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t)`` of each timestep, ``(N,)`` float32."""

    def forward_process(self, pipe, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """``x_t = alpha_t x_0 + sigma_t noise``."""

    def target(self, pipe, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        """What the network predicts at that ``x_t`` (epsilon for SD-type UNets, the velocity for SD3-type)."""

    def x0_prediction(self, pipe, output: Tensor, x_t: Tensor, timesteps: Tensor) -> Tensor:
        """The ``x_0`` a network output implies at ``x_t`` (affine in the output)."""

    def predict(self, denoiser, pipe, batch: "Trajectory", rows: Tensor, x_t: Tensor, timesteps: Tensor,
                guidance_scale: float) -> Tensor:
        """The network output at ``x_t`` for the prompts of ``batch[rows]``, guided at ``guidance_scale``."""

    def schedule(self, pipe, num_steps: int) -> Tensor:
        """The sampler's timesteps at ``num_steps`` steps."""

    def kl_factor(self, pipe, timesteps: Tensor, num_steps: int, cfg: "DDPOConfig") -> Tensor:
        """``kappa_t``: the KL of the family's stochastic step (DDPO's / Flow-GRPO's) from ``timesteps`` of a
        ``num_steps`` schedule, between two outputs at one state, is ``kappa_t`` times their mean squared change."""


class Objective(Protocol):
    """One epoch's update of the policy from a batch of samples and their advantages."""

    name: str

    def update(self, state: Any, batch: "Trajectory", advantages: np.ndarray, epoch: int) -> dict[str, float]:
        """Optimizer steps on ``batch`` (this process's share; ``advantages`` aligned with it); returns the epoch
        row's ``train_*`` columns. ``state`` is the run's :class:`~ddpo_study.train.RunState`."""

    # Optional, for objectives that sample from a policy of their own and keep state between epochs (NFT):
    # ``sampling(state)``, a context manager entered around the epoch's sampling that yields the config to sample
    # with (default: the current weights and ``state.cfg``); ``state_dict()`` -> named tensors for the resume
    # checkpoint and ``load_state_dict(tensors)`` on resume.


def _ppo(cfg: "DDPOConfig", family: SamplerFamily) -> Objective:
    from .ppo import PPO

    return PPO(cfg, family)


def _nft(cfg: "DDPOConfig", family: SamplerFamily) -> Objective:
    from .nft import NFT

    return NFT(cfg, family)


#: Algorithm name (``config.ALGORITHMS``) -> (objective factory ``(cfg, family) -> Objective``, the sampler
#: families it trains). DDPO and Flow-GRPO are one objective, PPO-clip on per-step log-probs, on two families (a
#: name each, as the literature names them); DiffusionNFT trains on the forward process, which both families
#: have, so one name trains either and the model decides.
ALGORITHMS = {"ddpo": (_ppo, ("ddim",)), "flow_grpo": (_ppo, ("flow",)), "nft": (_nft, ("ddim", "flow"))}


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
    factory, family_names = ALGORITHMS[algorithm]
    if family.name not in family_names:
        kinds = {"ddim": "an SD-type (UNet, DDIM)", "flow": "an SD3-type (flow-matching transformer)"}
        raise ValueError(f"algorithm {algorithm!r} trains {' or '.join(kinds[f] for f in family_names)} model; "
                         f"this model is {kinds.get(family.name, family.name)}")
    return factory(cfg, family)
