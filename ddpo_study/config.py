"""The configuration of one DDPO run (one grid cell): a typed dataclass, validated on load.

Defaults follow ddpo-pytorch where it has an opinion (eta 1.0, PPO clip range 1e-4, advantage clip 5,
per-prompt stat tracking on) and the toy study otherwise. One deliberate departure: prompts are drawn in
groups of ``images_per_prompt`` = 8 images, each group its own per-prompt baseline: the stat tracker's buffer and
min count default to ``images_per_prompt`` (0 = derive), so changing the group size keeps that property;
``images_per_prompt: 1`` with ``stat_buffer_size: 32, stat_min_count: 16`` is ddpo-pytorch's scheme (see
``train.epoch_prompts`` for why). Every field has a
one-line docstring (units, meaning); :func:`field_docs` reads them, so ``--help`` texts and the notebook's
parameter table come from the same place.

Loading (:meth:`DDPOConfig.from_dict`, :func:`load_config`) rejects unknown keys with a close-match hint and
checks types and ranges, so a typo in a grid YAML fails before anything trains.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import textwrap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .seeding import MAX_INNER_EPOCHS

MODES = ("lora", "full", "progressive")
#: Training algorithms (``algorithm.ALGORITHMS`` maps each to its objective and the model family it trains).
ALGORITHMS = ("ddpo", "flow_grpo", "nft")
#: DiffusionNFT's regression losses (``nft.weighted_x0_loss``).
NFT_WEIGHTINGS = ("adaptive", "velocity", "epsilon")
DIVERSITY_FORMS = ("cross_prompt", "within_prompt")
DIVERSITY_FEATURES = ("clip", "lpips", "pixel")
MIXED_PRECISION = ("no", "fp16", "bf16")
#: Eval image ``j`` of every prompt is drawn with seed ``EVAL_SEED_BASE + j`` in every run, so evals of
#: different runs and epochs compare image by image.
EVAL_SEED_BASE = 10_000
#: LoRA's default targets: the attention projections of every self- and cross-attention block (TRL's choice).
DEFAULT_LORA_TARGETS = "to_q,to_k,to_v,to_out.0"


#: Config keys a fine-tuning mode never reads: runs differing only there are the same experiment.
UNUSED_BY_MODE = {
    "lora": ("full_learning_rate", "progressive_switch_epoch"),
    "full": ("lora_learning_rate", "lora_rank", "lora_alpha", "lora_target_modules", "progressive_switch_epoch"),
    "progressive": (),
}


#: DiffusionNFT's own keys (the ``nft_*`` fields).
NFT_KEYS = ("nft_beta", "nft_weighting", "nft_timesteps_per_sample", "nft_guided", "nft_sample_eta", "nft_kl_beta",
            "nft_decay_rate", "nft_decay_max", "nft_decay_flat_steps", "nft_probe_steps")
#: Config keys an algorithm never reads, as :data:`UNUSED_BY_MODE` for modes: the PPO algorithms read no NFT key
#: and each family's sampler reads only its own noise (DDIM's ``eta``, the flow SDE's ``noise_level``); NFT has no
#: PPO ratio, no timestep fraction of its own chain and its own KL weight. (NFT reads both noises: the eval and
#: the step probe of whichever family the model is, see ``nft``.)
UNUSED_BY_ALGORITHM = {
    "ddpo": ("noise_level", "sde_window", *NFT_KEYS),
    "flow_grpo": ("eta", *NFT_KEYS),
    "nft": ("clip_range", "timestep_fraction", "kl_beta", "sde_window"),
}


def unused_keys(mode: str, algorithm: str | None = "ddpo") -> set[str]:
    """Keys a run of ``mode`` and ``algorithm`` never reads (a missing algorithm, as in older runs, is DDPO)."""
    algorithm = algorithm if isinstance(algorithm, str) and algorithm else "ddpo"
    return {*UNUSED_BY_MODE.get(mode, ()), *UNUSED_BY_ALGORITHM.get(algorithm, ())}


class ConfigError(ValueError):
    """A configuration that cannot be run; the message names the field."""


def tracker_names() -> set[str]:
    """The tracker names accelerate's ``log_with`` accepts ('all' = every installed one)."""
    from accelerate.utils import LoggerType

    return {t.value for t in LoggerType}


def check_diversity(diversity_lambda: float, diversity_form: str, diversity_feature: str) -> None:
    """The one check of the diversity penalty's settings (:meth:`DDPOConfig.validate` and
    :class:`~ddpo_study.rewards.DiversityPenalty` call it): a :class:`ConfigError` naming the field."""
    for key, value, ok, msg in (
        ("diversity_form", diversity_form, diversity_form in DIVERSITY_FORMS, f"must be one of {DIVERSITY_FORMS}"),
        ("diversity_feature", diversity_feature, diversity_feature in DIVERSITY_FEATURES,
         f"must be one of {DIVERSITY_FEATURES}"),
        ("diversity_lambda", diversity_lambda, diversity_lambda >= 0, "must be >= 0"),
    ):
        if not ok:
            raise ConfigError(f"{key}={value!r}: {msg}")


@dataclass
class DDPOConfig:
    # --- run -------------------------------------------------------------------------------------------
    output_dir: str = "runs/default"
    """Folder that holds everything this run writes (config, metrics, eval images, checkpoints)."""
    seed: int = 0
    """Seed of the run: all sampling noise, prompt draws and timestep draws derive from it and the epoch."""
    model: str = "toy"
    """Pipeline to fine-tune: 'toy', 'sd15', a local diffusers folder or a hub id."""
    algorithm: str = "ddpo"
    """'ddpo' (PPO-clip on DDIM log-probs; SD-type models), 'flow_grpo' (PPO-clip on the flow SDE's log-probs; SD3-type models) or 'nft' (DiffusionNFT on the forward process; either)."""
    clip_model: str = ""
    """CLIP used by rewards and metrics; '' means the toy model's clip/ folder for 'toy', else openai/clip-vit-large-patch14."""
    aesthetic_model: str = ""
    """Aesthetic predictor weights; '' means the toy model's aesthetic/ folder for 'toy' (LAION file for SD)."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda'."""
    mixed_precision: str = "no"
    """Precision of the frozen weights and forward passes: 'no', 'fp16', 'bf16'; trainable weights stay fp32."""
    num_threads: int = 0
    """CPU threads for torch (0 = torch's default); the grid runner sets 1 per cell when it runs cells in parallel."""

    # --- prompts ---------------------------------------------------------------------------------------
    prompt_set: str = "toy_30"
    """Training prompts: a registered set name (see ddpo_study.prompts) or a text file, one prompt per line."""
    eval_prompt_set: str = "toy_eval"
    """Held-out prompts for evaluation (name or file)."""
    eval_num_prompts: int = 16
    """How many eval prompts (the first N of the set) are sampled at each evaluation."""
    eval_num_seeds: int = 4
    """Fixed seeds per eval prompt (seeds EVAL_SEED_BASE .. EVAL_SEED_BASE+N-1, the same in every run)."""
    eval_every: int = 5
    """Evaluate every N epochs (and always at epoch 0 and at the last epoch)."""

    # --- sampling --------------------------------------------------------------------------------------
    num_steps: int = 20
    """DDIM steps per image."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale (1.0 = no guidance); 5.0 as DDPO, and where the toy base model meets its prompt-following bar."""
    eta: float = 1.0
    """DDIM eta: 1.0 makes every step stochastic, which the policy-gradient needs (0 would make log-probs degenerate)."""
    noise_level: float = 0.7
    """Flow-GRPO: the SDE's noise level (flow_grpo's default 0.7); the SD-type sampler uses eta instead."""
    sde_window: int = 0
    """Flow-GRPO-Fast: SDE noise on only this many consecutive steps (a window placed at random each epoch; the rest is the ODE) and only they train; 0 = every step (Flow-GRPO)."""
    eval_num_steps: int = 0
    """Sampler steps at evaluation (0 = num_steps); Flow-GRPO trains on few SDE steps and evaluates the ODE at more (flow_grpo: 10 / 40)."""
    samples_per_epoch: int = 64
    """Images sampled per epoch (all processes together)."""
    images_per_prompt: int = 8
    """Images per drawn prompt in an epoch (a group sharing one prompt); 1 = DDPO's independent uniform draws."""
    sample_batch_size: int = 32
    """Images per sampling batch (per process)."""

    # --- optimisation ----------------------------------------------------------------------------------
    num_epochs: int = 20
    """Epochs of sample -> reward -> PPO update."""
    mode: str = "lora"
    """Which weights train: 'lora', 'full' (all UNet weights) or 'progressive' (full, then LoRA on top)."""
    progressive_switch_epoch: int = 5
    """Progressive mode: epochs of full fine-tuning before the switch to LoRA on the updated weights."""
    lora_rank: int = 4
    """LoRA rank r."""
    lora_target_modules: str = DEFAULT_LORA_TARGETS
    """Comma-separated UNet modules that get a LoRA (peft's suffix match: 'to_k' = every key projection, 'attn2.to_k' = cross-attention keys only)."""
    lora_alpha: float = 4.0
    """LoRA alpha (the update is scaled by alpha / r)."""
    init_lora: str = ""
    """LoRA mode: a diffusers LoRA file or folder (a run's final/lora) the adapter starts from (not a zero update); epoch 0 is then that adapter."""
    lora_learning_rate: float = 3e-4
    """AdamW learning rate for LoRA parameters."""
    full_learning_rate: float = 3e-5
    """AdamW learning rate for full fine-tuning (all UNet weights)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    train_batch_size: int = 16
    """Samples per PPO minibatch (each contributes timestep_fraction x num_steps transitions)."""
    gradient_accumulation_steps: int = 1
    """Minibatches whose gradients are summed before one optimizer step."""
    train_timesteps_per_pass: int = 0
    """Timesteps scored per UNet call in the PPO pass (0 = all selected steps of a minibatch at once; lower saves memory)."""
    inner_epochs: int = 1
    """PPO passes over each epoch's samples."""
    timestep_fraction: float = 0.5
    """Fraction of each trajectory's DDIM steps used for training (a fresh random subset per sample)."""
    clip_range: float = 1e-4
    """PPO ratio clip epsilon (ddpo-pytorch's default)."""
    adv_clip_max: float = 5.0
    """Advantages are clipped to [-adv_clip_max, adv_clip_max]."""
    max_grad_norm: float = 1.0
    """Gradient-norm clipping threshold."""
    per_prompt_stat_tracking: bool = True
    """Normalise rewards per prompt (ddpo-pytorch's default; TRL's default was off) instead of per batch."""
    stat_buffer_size: int = 0
    """Per-prompt stat tracking: rewards remembered per prompt; 0 = images_per_prompt (with stat_min_count 0: each group is its own baseline)."""
    stat_min_count: int = 0
    """Per-prompt stat tracking: below this many rewards a prompt uses the batch mean/std; 0 = images_per_prompt."""
    kl_beta: float = 0.0
    """Weight of the KL-to-base penalty on the sampled transitions (DPOK-style); 0 disables it."""
    target_kl: float = 0.0
    """Step controller: adapt the lr so each optimizer step moves the policy by this KL (per latent dim, on a probe of the epoch's transitions); 0 = fixed lr."""

    # --- DiffusionNFT (algorithm 'nft'; ddpo_study.nft) ----------------------------------------------------
    nft_beta: float = 1.0
    """NFT: beta of the implicit policies pred+ = beta pred + (1 - beta) pred_old, pred- = (1 + beta) pred_old - beta pred (DiffusionNFT: 1, or 0.1)."""
    nft_weighting: str = "adaptive"
    """NFT: regression loss per timestep: 'adaptive' (DiffusionNFT's x0 error over its detached mean; the same for an epsilon or velocity model), 'velocity' (flow matching's) or 'epsilon' (DDPM's)."""
    nft_timesteps_per_sample: int = 0
    """NFT: timesteps of the sampler's schedule each sample trains on per pass, without repeats (0 = all num_steps; DiffusionNFT: 99% of them)."""
    nft_guided: bool = True
    """NFT: train the guided prediction at guidance_scale (both CFG branches through the policy); false = the conditional one (guidance_scale 1 makes both CFG-free)."""
    nft_sample_eta: float = 0.0
    """NFT: noise of the training sampler, DDIM eta or the flow SDE's noise level (0 = the deterministic solver, DiffusionNFT's); eval samples as eta says."""
    nft_kl_beta: float = 0.0
    """NFT: weight of the squared change of the prediction from the base model's, per latent dim (DiffusionNFT: 1e-4); 0 disables it."""
    nft_decay_rate: float = 0.001
    """NFT: after each epoch old <- d old + (1 - d) policy, d growing by this per optimizer step done (DiffusionNFT: 0.001, or 0.0075)."""
    nft_decay_max: float = 0.5
    """NFT: the old policy's decay d stops growing here (DiffusionNFT: 0.5, or 0.999; 0 = the old policy is each epoch's starting weights)."""
    nft_decay_flat_steps: int = 0
    """NFT: optimizer steps before the old policy's decay d starts to grow (DiffusionNFT: 0, or 75)."""
    nft_probe_steps: int = 0
    """NFT: the step probe measures the KL of DDPO's step (eta) / Flow-GRPO's (noise_level) on a schedule of this many steps (0 = num_steps; 20 = DDPO v2's, so target_kl means its step whatever num_steps NFT samples with)."""

    # --- reward ----------------------------------------------------------------------------------------
    reward: str = "aesthetic"
    """Reward name from ddpo_study.rewards (aesthetic, jpeg_compressibility, jpeg_incompressibility, clip_alignment)."""
    diversity_lambda: float = 0.0
    """Diversity penalty weight: reward - lambda * similarity to other images; 0 disables it."""
    diversity_form: str = "cross_prompt"
    """Diversity penalty partners: 'cross_prompt' (other prompts in the batch) or 'within_prompt' (same prompt)."""
    diversity_feature: str = "clip"
    """Feature space of the similarity: 'clip', 'lpips' or 'pixel'."""

    # --- guard -----------------------------------------------------------------------------------------
    stop_when_prompts_lost: bool = False
    """Guard: stop at the first eval whose prompts are lost against epoch 0 (the stop_* thresholds; ddpo_study.guard); final/ then keeps the last passing eval's weights."""
    stop_cross_prompt_ratio: float = 0.95
    """Guard: lost when cross-prompt CLIP distance is below this fraction of epoch 0's (collapse.py's rule)."""
    stop_retrieval_drop: float = 0.10
    """Guard: lost when prompt retrieval is this much (absolute) below epoch 0's (collapse.py's rule)."""
    stop_judge_drop: float = 0.10
    """Guard, toy prompts only: lost when judge all-correct is this much below epoch 0's (0 = not used); see docs/guard.md."""

    # --- checkpoints -----------------------------------------------------------------------------------
    checkpoint_every: int = 1
    """Write a resumable checkpoint every N epochs (and at the end)."""
    log_with: str = ""
    """Also log each epoch's row to accelerate trackers, comma-separated ('tensorboard', 'wandb', ...; '' = metrics.csv only)."""

    # ---------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # The tracker's window derives from the group size unless set: buffer = min count = images_per_prompt
        # makes each epoch's group of one prompt its own baseline (the study's estimator). Resolved here, so
        # config.json and every reader see the numbers the run used.
        if self.stat_buffer_size == 0:
            self.stat_buffer_size = self.images_per_prompt
        if self.stat_min_count == 0:
            self.stat_min_count = self.images_per_prompt

    @property
    def trackers(self) -> list[str]:
        """``log_with`` as accelerate's list of tracker names (empty: no tracker)."""
        return [t.strip() for t in self.log_with.split(",") if t.strip()]

    @property
    def kl_to_base_weight(self) -> float:
        """The weight of the algorithm's KL-to-base term (``nft_kl_beta`` for NFT, else ``kl_beta``): a reference
        model is kept when it is > 0."""
        return self.nft_kl_beta if self.algorithm == "nft" else self.kl_beta

    def learning_rate_for(self, phase: str) -> float:
        """The starting AdamW rate of ``phase`` ('lora', or 'full'/'progressive': all UNet weights)."""
        return self.lora_learning_rate if phase == "lora" else self.full_learning_rate

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DDPOConfig":
        """Build and validate; unknown keys and wrong types are a :class:`ConfigError` naming the key."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, names, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(f"unknown config key(s): {', '.join(hints)}")
        kwargs = {k: _coerce(k, v, names[k].type) for k, v in values.items()}
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{key}={getattr(self, key)!r}: {msg}")

        need(self.mode in MODES, "mode", f"must be one of {MODES}")
        need(self.algorithm in ALGORITHMS, "algorithm", f"must be one of {ALGORITHMS}")
        if self.init_lora:  # an adapter to start from: only LoRA mode has one at epoch 0
            need(self.mode == "lora", "init_lora", f"needs mode 'lora' (mode is {self.mode!r})")
            need(Path(self.init_lora).exists(), "init_lora", "no such file or folder")
        trackers = tracker_names()
        need(all(t in trackers for t in self.trackers), "log_with", f"names accelerate trackers: {sorted(trackers)}")
        check_diversity(self.diversity_lambda, self.diversity_form, self.diversity_feature)
        need(self.mixed_precision in MIXED_PRECISION, "mixed_precision", f"must be one of {MIXED_PRECISION}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", "auto, cpu or cuda[:N]")
        for key in ("num_steps", "samples_per_epoch", "sample_batch_size", "num_epochs", "train_batch_size",
                    "gradient_accumulation_steps", "inner_epochs", "lora_rank", "eval_num_prompts",
                    "eval_num_seeds", "eval_every", "checkpoint_every", "stat_buffer_size", "stat_min_count",
                    "images_per_prompt"):
            need(getattr(self, key) >= 1, key, "must be >= 1")
        for key in ("lora_learning_rate", "full_learning_rate", "clip_range", "adv_clip_max", "max_grad_norm",
                    "lora_alpha", "adam_epsilon"):
            need(getattr(self, key) > 0, key, "must be > 0")
        for key in ("train_timesteps_per_pass", "eta", "kl_beta", "target_kl", "adam_weight_decay", "num_threads",
                    "eval_num_steps", "noise_level", "sde_window", "stop_retrieval_drop", "stop_judge_drop"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        need(self.guidance_scale >= 1.0, "guidance_scale", "must be >= 1 (1 disables guidance)")
        need(0 < self.timestep_fraction <= 1, "timestep_fraction", "must be in (0, 1]")
        need(0 < self.stop_cross_prompt_ratio <= 1, "stop_cross_prompt_ratio", "must be in (0, 1]")
        need(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "adam_beta1", "betas must be in [0, 1)")
        need(self.samples_per_epoch % max(self.images_per_prompt, 1) == 0, "images_per_prompt",
             f"must divide samples_per_epoch={self.samples_per_epoch}")
        need(self.samples_per_epoch % (self.train_batch_size * self.gradient_accumulation_steps) == 0,
             "gradient_accumulation_steps", f"train_batch_size x gradient_accumulation_steps (the samples of one "
             f"optimizer step) must divide samples_per_epoch={self.samples_per_epoch}")
        need(all(t.strip() for t in self.lora_target_modules.split(",")), "lora_target_modules",
             "must be comma-separated module names, e.g. 'to_q,to_k,to_v,to_out.0'")
        need(self.stat_min_count <= self.stat_buffer_size, "stat_min_count", "must be <= stat_buffer_size")
        need(self.inner_epochs <= MAX_INNER_EPOCHS, "inner_epochs",
             f"must be <= {MAX_INNER_EPOCHS} (each PPO pass has its own random stream: ddpo_study.seeding)")
        if self.algorithm == "ddpo":
            need(self.eta > 0 or self.num_epochs == 0, "eta", "must be > 0 to train (eta=0 has no log-probability)")
        elif self.algorithm == "flow_grpo":  # the flow SDE's steps need noise for a log-probability, as DDIM's
            need(self.noise_level > 0 or self.num_epochs == 0, "noise_level",
                 "must be > 0 to train (the ODE step has no log-probability)")
        else:
            self._validate_nft(need)
        need(int(self.num_steps * self.timestep_fraction) >= 1, "timestep_fraction",
             "num_steps x timestep_fraction must select at least one step")
        if self.sde_window:
            need(self.algorithm == "flow_grpo", "sde_window", "is Flow-GRPO-Fast's window: needs algorithm flow_grpo")
            need(self.sde_window <= self.num_steps, "sde_window", f"must be <= num_steps={self.num_steps}")
            need(int(self.sde_window * self.timestep_fraction) >= 1, "sde_window",
                 "sde_window x timestep_fraction must select at least one step (Flow-GRPO-Fast trains the window: "
                 "timestep_fraction 1)")
        if self.mode == "progressive":
            need(1 <= self.progressive_switch_epoch < self.num_epochs, "progressive_switch_epoch",
                 "must be in [1, num_epochs) so that both phases train")

    def _validate_nft(self, need) -> None:
        """The checks of algorithm 'nft' (``need`` is :meth:`validate`'s one-line error)."""
        need(self.mode in ("lora", "full"), "mode", "algorithm 'nft' trains 'lora' or 'full'")
        need(self.nft_beta > 0, "nft_beta", "must be > 0")
        need(self.nft_weighting in NFT_WEIGHTINGS, "nft_weighting", f"must be one of {NFT_WEIGHTINGS}")
        need(0 <= self.nft_timesteps_per_sample <= self.num_steps, "nft_timesteps_per_sample",
             f"must be in [0, num_steps={self.num_steps}] (0 = all)")
        for key in ("nft_sample_eta", "nft_kl_beta", "nft_decay_rate", "nft_decay_flat_steps", "nft_probe_steps"):
            need(getattr(self, key) >= 0, key, "must be >= 0")
        need(0 <= self.nft_decay_max < 1, "nft_decay_max", "must be in [0, 1) (1 would freeze the old policy)")
        if self.target_kl:  # the probe measures the KL of DDPO's / Flow-GRPO's step, which needs noise
            need(self.eta > 0, "eta", "must be > 0 for NFT's step probe (the KL of the DDIM step at eta)")
            need(self.noise_level > 0, "noise_level", "must be > 0 for NFT's step probe (the KL of the flow SDE step)")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Accept YAML/JSON scalars for the annotated type; ints for floats; nothing else silently."""
    kind = {"int": int, "float": float, "bool": bool, "str": str}[annotation if isinstance(annotation, str)
                                                                  else annotation.__name__]
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}={value!r}: expected {kind.__name__}, got {type(value).__name__}")


@lru_cache(maxsize=None)
def field_docs() -> dict[str, str]:
    """{field name: its one-line docstring}, read from this module's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(DDPOConfig)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DDPOConfig:
    """Read a YAML or JSON config file (plus overrides) into a validated :class:`DDPOConfig`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return DDPOConfig.from_dict({**data, **(overrides or {})})


def save_config(cfg: DDPOConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
