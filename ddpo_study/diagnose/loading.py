"""Diagnose any fine-tuned checkpoint against its base model: a real cross-prompt collapse, or a loading or seeding bug?

Users of DDPO who see "the same image for every prompt" (huggingface/trl#2113) first need to know which of three
things they are looking at: the weights did not load (trl#2505: a LoRA loaded with ``load_lora_weights`` behaved
like the base model), every prompt was sampled from the same noise (the #2113 inference script seeds once), or the
fine-tuned model really ignores its prompts. This module answers that from the two models alone; nothing here
needs training logs.

Inputs (:func:`setup`):

* a **base model**: ``toy``, ``sd15``, a diffusers pipeline folder or a hub id (:func:`ddpo_study.models.load_pipeline`);
* a **tuned model**, in any of these forms (:func:`inspect_tuned` tells them apart):

  - a diffusers LoRA: a folder holding ``pytorch_lora_weights.safetensors`` (or ``.bin``), or the file itself.
    That is what our runs keep (``<run>/final/lora``), what TRL's ``DDPOTrainer.save_pretrained`` writes (next to a
    whole pipeline in the same folder) and what its accelerate checkpoints hold. Loaded with diffusers' stock
    ``lora_state_dict`` + ``load_lora_into_unet``, as ``pipe.load_lora_weights`` does;
  - a ddpo-pytorch checkpoint: ``unet.save_attn_procs`` of diffusers 0.17's ``LoRAAttnProcessor`` (keys
    ``<block>.attn1.processor.to_q_lora.down.weight``...; ``pytorch_lora_weights.bin``, ``pytorch_model.bin`` or a
    safetensors file), converted to a peft adapter on our UNet (:func:`attn_procs_to_peft`);
  - a full UNet: a diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model*.safetensors|.bin``; fp16 is
    upcast), or a folder with a ``unet/`` subfolder (a pipeline, TRL's or ddpo-pytorch's full checkpoints);
  - one of our run folders (``config.json`` + ``metrics.csv``): its final (or latest) weights, its base model,
    reward and sampling settings.

  ``.bin`` files are read with ``torch.load(weights_only=True)``: a file holding pickled Python objects other than
  tensors is refused with one line (:class:`TunedModelError`), never unpickled;
* **prompts**: a prompt set name or file (default: the toy eval prompts for the toy model, ``sd_animals_30``
  otherwise; the first ``num_prompts`` of it).

What it measures (:func:`run_all`), every image drawn with per-image seeds (an image depends only on its prompt,
seed and the weights, see :mod:`ddpo_study.sampler`):

1. **the symptom** (:func:`symptom`): cross-prompt diversity and prompt retrieval of base and tuned, once with the
   *same* seeds for every prompt (seed ``EVAL_SEED_BASE + j`` for column ``j``: images of different prompts share
   their noise, as in the #2113 script) and once with a *different* seed per prompt;
2. **is the LoRA even loaded?** (:func:`loading_checks`): the number of layers the adapter attached to, the L2
   distance of the tuned UNet's effective weights from the base's
   (:func:`ddpo_study.finetune.param_distance_from_base`), the pixel difference of tuned and base images at the same
   seeds, and that LoRA scale 0 reproduces the base bit for bit;
3. **LoRA scale sweep** (:func:`scale_sweep`): the adapter scaled from 0 to 1 (``set_adapters``; a full or
   progressive UNet: its weights interpolated, ``base + s * (tuned - base)``, which is what scaling a LoRA does),
   as a reward-diversity curve;
4. **combined generation** (:func:`switch_sweep`): the base UNet for the first ``k`` of the ``T`` denoising steps and
   the tuned one for the rest (:func:`sample_switched`), ``k`` swept from 0 (tuned) to ``T`` (base): the layout is
   set early, so this shows how much diversity the early steps carry and what reward it costs;
5. **a verdict** (:func:`verdict`) from the thresholds below, with the numbers behind it.

:func:`write_report` runs ``notebooks/diagnose.ipynb`` (the same calls) through papermill and writes one
self-contained, code-free HTML page; ``python -m ddpo_study diagnose`` is its command line.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .config import EVAL_SEED_BASE, DDPOConfig
from .finetune import ADAPTER_NAME
from .images import to_uint8
from .models import REPO_ROOT, TOY_MODEL_DIR, resolve_device, resolve_model

NOTEBOOK = REPO_ROOT / "notebooks" / "diagnose.ipynb"
REPORT_NOTEBOOK, REPORT_HTML, REPORT_JSON = "diagnose.ipynb", "diagnose.html", "diagnose.json"

# ---------------------------------------------------------------------------------------------------- thresholds
#: Tuned and base images whose mean absolute difference at the same prompts and seeds is below this many 8-bit
#: levels are "the same outputs": the tuned weights are not in effect.
SAME_OUTPUT_LEVELS = 0.5
#: Collapse: the tuned model's cross-prompt CLIP diversity at the same seed below this fraction of the base's ...
COLLAPSE_DIVERSITY_RATIO = 0.95
#: ... or its prompt retrieval accuracy this much below the base's (absolute).
COLLAPSE_RETRIEVAL_DROP = 0.10
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
    "SHARED_NOISE_RATIO": (SHARED_NOISE_RATIO, "base diversity with shared seeds / with a seed per prompt below "
                           "which the shared noise alone makes prompts look alike"),
}

#: Names of the files a tuned model may come in (see the module docstring).
LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
STATE_FILES = ("pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin")
SEED_MODES = {"shared": "the same seeds for every prompt", "per_prompt": "a different seed per prompt"}

_ATTN_PROC_KEY = re.compile(r"(?P<block>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<part>down|up)"
                            r"\.weight")


class TunedModelError(ValueError):
    """A tuned model that cannot be read or does not fit the base; the message is one line naming the file."""


# ================================================================================================ reading weights
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a safetensors file or a ``torch.save`` file of tensors only.

    ``.bin``/``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``: anything that would need
    unpickling a Python object is refused with :class:`TunedModelError` (no code in the file can run).
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - a corrupt header, a truncated file...
            raise TunedModelError(f"{path} is not a readable safetensors file ({_first_line(err)})") from err
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TunedModelError(f"{path} holds pickled Python objects, not only tensors: refusing to unpickle it "
                              "(that could run code); re-save its state dict with safetensors") from None
    except Exception as err:  # noqa: BLE001
        raise TunedModelError(f"could not read {path} as a tensor file ({type(err).__name__}: "
                              f"{_first_line(err)})") from err
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise TunedModelError(f"{path} does not hold a flat dict of named tensors (got {type(obj).__name__})")
    return obj


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _tensor_names(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except Exception as err:  # noqa: BLE001
            raise TunedModelError(f"{path} is not a readable safetensors file ({_first_line(err)})") from err
    return list(read_state_dict(path))


def _kind_of_file(path: Path) -> str:
    names = _tensor_names(path)
    if any(_ATTN_PROC_KEY.fullmatch(k) for k in names):
        return "attn_procs"
    if names and any("lora" in k for k in names):
        return "lora"
    raise TunedModelError(f"{path} holds no LoRA tensors (first keys: {names[:3]}); a full UNet goes in as its "
                          "diffusers folder (config.json + diffusion_pytorch_model.safetensors)")


def _unet_weight_file(folder: Path) -> Path | None:
    """The single weights file of a diffusers UNet folder (None for sharded or absent weights)."""
    if not (folder / "config.json").is_file():
        return None
    for pattern in ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin"):
        found = sorted(p for p in folder.glob(pattern) if not p.name.endswith(".index.json"))
        if found:
            return found[0]
    return None


def _is_unet_folder(folder: Path) -> bool:
    return _unet_weight_file(folder) is not None or any(folder.glob("diffusion_pytorch_model*.index.json"))


def _is_run_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "metrics.csv").is_file()


def inspect_tuned(tuned: str | Path) -> tuple[str, Path]:
    """``(kind, path)`` of a tuned model without loading it: kind is ``run``, ``lora`` (diffusers/TRL/ours),
    ``attn_procs`` (ddpo-pytorch) or ``unet`` (a full UNet folder); path is the file or folder to read.

    A registry name (``toy``) is taken as its pipeline folder, whose ``unet/`` is then the "tuned" UNet.
    """
    if not str(tuned).strip():
        raise TunedModelError("no tuned model given")
    path = Path(resolve_model(str(tuned)))
    if not path.exists():
        raise TunedModelError(f"tuned model {tuned}: no such file or folder")
    if path.is_file():
        return _kind_of_file(path), path
    if _is_run_folder(path):
        return "run", path
    for name in LORA_FILES:
        if (path / name).is_file():
            return _kind_of_file(path / name), path / name
    if _is_unet_folder(path):
        return "unet", path
    if _is_unet_folder(path / "unet"):
        return "unet", path / "unet"
    for name in STATE_FILES:
        if (path / name).is_file():
            return _kind_of_file(path / name), path / name
    raise TunedModelError(f"{path} holds no tuned weights I can read: looked for {', '.join(LORA_FILES)}, a UNet "
                          f"folder (config.json + diffusion_pytorch_model.*), unet/ and {', '.join(STATE_FILES)}")


# ================================================================================================ loading
def attn_procs_to_peft(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """ddpo-pytorch's ``LoRAAttnProcessor`` tensors -> (peft LoRA state dict, rank of each target module).

    ``<block>.processor.to_q_lora.down.weight`` is ``lora_A`` of the module ``<block>.to_q`` and ``up`` its
    ``lora_B``; ``to_out_lora`` belongs to ``to_out.0``. diffusers 0.17's processor adds
    ``scale * up(down(x))`` to the projection (scale 1, no network alpha), i.e. a peft LoRA with ``alpha = r``.
    """
    peft_sd, ranks, unknown = {}, {}, []
    for key, value in state_dict.items():
        m = _ATTN_PROC_KEY.fullmatch(key)
        if m is None:
            unknown.append(key)
            continue
        module = f"{m['block']}.{m['proj']}" + (".0" if m["proj"] == "to_out" else "")
        peft_sd[f"{module}.lora_{'A' if m['part'] == 'down' else 'B'}.weight"] = value.float()
        if m["part"] == "down":
            ranks[module] = int(value.shape[0])
    if unknown:
        raise TunedModelError(f"unexpected tensors in an attention-processor LoRA: {unknown[:3]}")
    return peft_sd, ranks


def _lora_layers(unet, adapter: str) -> int:
    """How many layers of ``unet`` carry the LoRA ``adapter``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(1 for m in unet.modules() if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {}))


def _add_attn_procs_lora(unet, file: Path, adapter: str) -> None:
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    peft_sd, ranks = attn_procs_to_peft(read_state_dict(file))
    own = {name for name, _ in unet.named_modules()}
    absent = sorted(set(ranks) - own)
    if absent:
        raise TunedModelError(f"{file}: its LoRA layers do not exist in this UNet (e.g. {absent[0]}): was it "
                              "trained on another base model?")
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: r for m, r in ranks.items() if r != rank}
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(ranks), rank_pattern=pattern,
                        alpha_pattern=dict(pattern), init_lora_weights=True)
    unet.add_adapter(config, adapter_name=adapter)
    try:
        result = set_peft_model_state_dict(unet, peft_sd, adapter_name=adapter)
    except RuntimeError as err:  # shape mismatch
        raise TunedModelError(f"{file} does not fit this UNet ({_first_line(err)})") from err
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise TunedModelError(f"{file}: tensors that match no LoRA layer of this UNet, e.g. {unexpected[:2]}")
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.requires_grad_(False)


def _add_diffusers_lora(unet, file: Path, adapter: str) -> None:
    """diffusers' stock path (what ``pipe.load_lora_weights`` runs), into ``unet``."""
    from diffusers import StableDiffusionPipeline

    try:
        if file.suffix == ".safetensors":  # read from the file, so the adapter's LoraConfig metadata is used
            state_dict, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
                str(file.parent), weight_name=file.name, return_lora_metadata=True, local_files_only=True)
        else:
            state_dict, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
                read_state_dict(file), return_lora_metadata=True)
        StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=unet, adapter_name=adapter,
                                                    metadata=metadata)
    except TunedModelError:
        raise
    except Exception as err:  # noqa: BLE001 - diffusers/peft raise many types for a file that does not fit
        raise TunedModelError(f"could not load the LoRA {file} into this UNet ({_first_line(err)})") from err


def _load_unet_folder(folder: Path, like) -> Any:
    """A full diffusers UNet folder, in the dtype and on the device of ``like`` (the base UNet)."""
    from diffusers import UNet2DConditionModel

    weights = _unet_weight_file(folder)
    try:
        if weights is None:  # sharded: diffusers reads the index (safetensors, or .bin with weights_only=True)
            unet = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)
        else:
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder)))
            result = unet.load_state_dict(read_state_dict(weights), strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise TunedModelError(f"{weights} does not match its config.json: missing {result.missing_keys[:2]}, "
                                      f"unexpected {result.unexpected_keys[:2]}")
    except TunedModelError:
        raise
    except Exception as err:  # noqa: BLE001
        raise TunedModelError(f"could not load the UNet folder {folder} ({_first_line(err)})") from err
    # nn.Module.to: diffusers' own .to(dtype=...) logs a float32-modules warning into the report
    return torch.nn.Module.to(unet, device=like.device, dtype=like.dtype).eval().requires_grad_(False)


@dataclass
class TunedModel:
    """The tuned UNet next to the base, and how it was read."""

    source: Path  #: the file or folder read
    kind: str  #: ``lora``, ``attn_procs``, ``unet`` or ``unet+lora`` (a progressive run)
    unet: Any  #: the UNet to sample with (a LoRA-wrapped copy of the base, or a loaded full UNet)
    adapter: str | None  #: the LoRA adapter's name in ``unet``
    lora_on_base: bool  #: the adapter sits on an unchanged copy of the base: LoRA scale 0 must give the base exactly
    lora_layers: int = 0  #: layers carrying the adapter (0 for a LoRA whose keys matched nothing: not applied)
    run_config: dict | None = None  #: a run folder's config.json
    epoch: int | None = None  #: a run's epoch of the weights

    @property
    def description(self) -> str:
        what = {"lora": "diffusers LoRA", "attn_procs": "ddpo-pytorch attention-processor LoRA (converted to peft)",
                "unet": "full UNet", "unet+lora": "full-tuned UNet with a LoRA on top (progressive)"}[self.kind]
        extra = f", {self.lora_layers} LoRA layers" if self.adapter else ""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return f"{what} from {self.source}{extra}{epoch}"


def load_tuned(tuned: str | Path, base_unet, adapter_name: str = ADAPTER_NAME) -> TunedModel:
    """Read ``tuned`` (any form of :func:`inspect_tuned`) as a UNet next to ``base_unet`` (left untouched)."""
    kind, path = inspect_tuned(tuned)
    if kind == "run":
        from .explore import find_weights

        weights = find_weights(path)
        cfg = json.loads((path / "config.json").read_text())
        unet = _load_unet_folder(weights.unet, base_unet) if weights.unet is not None else copy.deepcopy(base_unet)
        adapter = None
        if weights.lora is not None:
            _add_diffusers_lora(unet, weights.lora / LORA_FILES[0], adapter_name)
            adapter = adapter_name
        kind = "unet+lora" if weights.unet is not None and weights.lora is not None else (
            "unet" if weights.unet is not None else "lora")
        return TunedModel(source=path, kind=kind, unet=unet, adapter=adapter, lora_on_base=weights.unet is None,
                          lora_layers=_lora_layers(unet, adapter_name) if adapter else 0, run_config=cfg,
                          epoch=weights.epoch)
    if kind == "unet":
        return TunedModel(source=path, kind=kind, unet=_load_unet_folder(path, base_unet), adapter=None,
                          lora_on_base=False)
    unet = copy.deepcopy(base_unet)
    if kind == "attn_procs":
        _add_attn_procs_lora(unet, path, adapter_name)
    else:
        _add_diffusers_lora(unet, path, adapter_name)
    layers = _lora_layers(unet, adapter_name)
    return TunedModel(source=path, kind=kind, unet=unet.eval(), adapter=adapter_name if layers else None,
                      lora_on_base=True, lora_layers=layers)


# ================================================================================================ sampling
def sample_switched(pipe, first_unet, rest_unet, switch_at: int, prompts: Sequence[str], seeds: Sequence[int],
                    num_inference_steps: int = 20, guidance_scale: float = 5.0, eta: float = 1.0,
                    batch_size: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1]: ``first_unet`` for DDIM steps ``0 .. switch_at - 1``, ``rest_unet`` after.

    The same chain as :func:`ddpo_study.sampler.sample_trajectories` (per-image generators for the initial latent
    and every step's noise, :func:`~ddpo_study.sampler.guided_noise_pred`,
    :func:`~ddpo_study.sampler.ddim_step_with_logprob`), so ``switch_at = 0`` reproduces ``rest_unet``'s images and
    ``switch_at = num_inference_steps`` ``first_unet``'s, bit for bit at the same batching (other batch sizes
    agree to float rounding). Both UNets must share dtype and device.
    """
    from diffusers.utils.torch_utils import randn_tensor

    from .sampler import ddim_step_with_logprob, encode_prompts, guided_noise_pred

    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not 0 <= switch_at <= num_inference_steps:
        raise ValueError(f"switch_at must be in [0, {num_inference_steps}], got {switch_at}")
    scheduler = pipe.scheduler
    param = next(rest_unet.parameters())
    device, dtype = param.device, param.dtype
    chunk = batch_size or len(prompts)
    out = []
    with torch.inference_mode():
        scheduler.set_timesteps(num_inference_steps, device=device)
        negative = encode_prompts(pipe, [""]).to(device=device, dtype=dtype)
        for start in range(0, len(prompts), chunk):
            p, s = prompts[start:start + chunk], seeds[start:start + chunk]
            generators = [torch.Generator().manual_seed(seed) for seed in s]
            embeds = encode_prompts(pipe, p).to(device=device, dtype=dtype)
            neg = negative.repeat(len(p), 1, 1)
            size = rest_unet.config.sample_size
            latents = randn_tensor((len(p), rest_unet.config.in_channels, size, size), generator=generators,
                                   device=device, dtype=torch.float32)
            latents = (latents * scheduler.init_noise_sigma).to(dtype)
            for j, t in enumerate(scheduler.timesteps):
                unet = first_unet if j < switch_at else rest_unet
                noise_pred = guided_noise_pred(unet, latents, t, embeds, neg, guidance_scale)
                latents, _ = ddim_step_with_logprob(scheduler, noise_pred, t, latents, eta=eta, generator=generators)
            vae = pipe.vae
            decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
            out.append((decoded.float() / 2 + 0.5).clamp(0, 1).cpu())
    return torch.cat(out)


# ================================================================================================ the diagnosis
@dataclass
class Diagnosis:
    """Everything a diagnosis compares; images and metrics are computed once and cached by name."""

    base_model: str
    pipe: Any  #: the base pipeline; ``pipe.unet`` is the base UNet
    tuned: TunedModel
    prompts: list[str]
    num_seeds: int
    num_steps: int
    guidance_scale: float
    eta: float
    reward_name: str
    reward: Any  #: a :class:`ddpo_study.rewards.Reward`
    clip: Any  #: a :class:`ddpo_study.models.ClipScorer`
    batch_size: int = 64
    images: dict[str, np.ndarray] = field(default_factory=dict)  #: uint8 (P, S, H, W, 3) per name
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    _scratch: Any = None  # a plain UNet for weight interpolation (full / progressive tuned models)

    @property
    def base_unet(self):
        return self.pipe.unet

    def seeds(self, mode: str = "shared") -> np.ndarray:
        """(P, S) seeds: ``shared`` = ``EVAL_SEED_BASE + j`` for every prompt; ``per_prompt`` = distinct for all."""
        p, s = len(self.prompts), self.num_seeds
        if mode == "shared":
            return np.tile(EVAL_SEED_BASE + np.arange(s), (p, 1))
        if mode == "per_prompt":
            return EVAL_SEED_BASE + s + np.arange(p * s).reshape(p, s)
        raise ValueError(f"seed mode must be one of {list(SEED_MODES)}, got {mode!r}")

    def sample(self, name: str, unet=None, first_unet=None, switch_at: int = 0, seeds: str = "shared") -> np.ndarray:
        """uint8 images (P, S, H, W, 3) of all prompts x seeds, cached under ``name``.

        ``unet`` alone: :func:`~ddpo_study.sampler.sample_trajectories`; with ``first_unet``: that UNet for the first
        ``switch_at`` steps (:func:`sample_switched`).
        """
        if name not in self.images:
            grid = self.seeds(seeds)
            flat_p = [p for p in self.prompts for _ in range(self.num_seeds)]
            flat_s = [int(s) for s in grid.reshape(-1)]
            if first_unet is None:
                from .sampler import sample_trajectories

                images = sample_trajectories(self.pipe, flat_p, flat_s, num_inference_steps=self.num_steps,
                                             guidance_scale=self.guidance_scale, eta=self.eta, unet=unet,
                                             batch_size=self.batch_size).images
            else:
                images = sample_switched(self.pipe, first_unet, unet, switch_at, flat_p, flat_s, self.num_steps,
                                         self.guidance_scale, self.eta, self.batch_size)
            arr = to_uint8(images)
            self.images[name] = arr.reshape(len(self.prompts), self.num_seeds, *arr.shape[1:])
        return self.images[name]

    def measure(self, name: str) -> dict[str, float]:
        """Reward, diversity and retrieval of the cached images ``name`` (:func:`ddpo_study.metrics.compute_eval_metrics`)."""
        if name not in self.metrics:
            from .metrics import compute_eval_metrics, image_rewards

            images = self.images[name]
            rewards = image_rewards(images, self.prompts, self.reward, batch_size=self.batch_size)
            self.metrics[name] = compute_eval_metrics(images, self.prompts, self.clip, rewards=rewards,
                                                      batch_size=self.batch_size)
        return self.metrics[name]

    def base(self, seeds: str = "shared") -> np.ndarray:
        return self.sample(f"base/{seeds}", unet=self.base_unet, seeds=seeds)

    def tuned_images(self, seeds: str = "shared") -> np.ndarray:
        return self.sample(f"tuned/{seeds}", unet=self.tuned.unet, seeds=seeds)

    @contextmanager
    def scaled(self, scale: float):
        """The tuned UNet at ``scale`` (0 = base, 1 = tuned): the LoRA scaled, or the weights interpolated."""
        tuned = self.tuned
        if tuned.adapter is not None and tuned.lora_on_base:
            tuned.unet.set_adapters([tuned.adapter], weights=[float(scale)])
            try:
                yield tuned.unet
            finally:
                tuned.unet.set_adapters([tuned.adapter], weights=[1.0])
            return
        from .finetune import effective_state_dict

        if self._scratch is None:
            self._scratch = copy.deepcopy(self.base_unet).eval().requires_grad_(False)
        base, target = effective_state_dict(self.base_unet), effective_state_dict(tuned.unet)
        state = {k: (b.float() + float(scale) * (target[k].float() - b.float())).to(b.dtype) for k, b in base.items()}
        self._scratch.load_state_dict(state, strict=False)
        yield self._scratch


def _default_prompts(base_model: str, run_config: dict | None) -> str:
    if run_config and run_config.get("eval_prompt_set"):
        return str(run_config["eval_prompt_set"])
    toy = base_model == "toy" or Path(resolve_model(base_model)).resolve() == TOY_MODEL_DIR.resolve()
    return "toy_eval" if toy else "sd_animals_30"


def setup(base_model: str | None, tuned: str | Path, prompts: str = "", reward: str = "", num_prompts: int = 16,
          num_seeds: int = 4, num_steps: int | None = None, guidance_scale: float | None = None,
          eta: float | None = None, device: str = "auto", clip_model: str = "", aesthetic_model: str = "",
          batch_size: int = 64) -> Diagnosis:
    """Load the base pipeline, the tuned model next to it, the reward and CLIP; nothing is sampled yet.

    Defaults (``None`` / ``""``): a run folder's own settings (model, reward, steps, guidance, eta, eval prompts,
    scorers); otherwise the :class:`~ddpo_study.config.DDPOConfig` defaults (20 steps, guidance 5, eta 1), the
    ``aesthetic`` reward and the prompts of :func:`_default_prompts`.
    """
    from .prompts import load_prompts
    from .rewards import RewardContext, make_reward
    from .train import load_scorers

    kind, path = inspect_tuned(tuned)  # fail on an unreadable path before loading models
    run_cfg = json.loads((path / "config.json").read_text()) if kind == "run" else {}
    base_model = base_model or run_cfg.get("model") or "toy"
    prompt_list = load_prompts(prompts or _default_prompts(base_model, run_cfg))[:num_prompts]
    if len(prompt_list) < 2:
        raise ValueError("a diagnosis needs at least 2 prompts (cross-prompt diversity compares prompts)")
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    defaults = DDPOConfig()
    pick = lambda given, key: given if given is not None else run_cfg.get(key, getattr(defaults, key))  # noqa: E731
    dev = resolve_device(device)

    from .models import load_pipeline

    pipe = load_pipeline(base_model, device=dev)
    tuned_model = load_tuned(path, pipe.unet)
    scorer_cfg = DDPOConfig(model=base_model, clip_model=clip_model or run_cfg.get("clip_model", ""),
                            aesthetic_model=aesthetic_model or run_cfg.get("aesthetic_model", ""))
    clip, aesthetic, _lpips, _warning = load_scorers(scorer_cfg, dev)
    reward_name = reward or run_cfg.get("reward") or "aesthetic"
    reward_fn = make_reward(reward_name, RewardContext(clip=clip, aesthetic=aesthetic, device=dev))
    return Diagnosis(base_model=str(base_model), pipe=pipe, tuned=tuned_model, prompts=prompt_list,
                     num_seeds=int(num_seeds), num_steps=int(pick(num_steps, "num_steps")),
                     guidance_scale=float(pick(guidance_scale, "guidance_scale")), eta=float(pick(eta, "eta")),
                     reward_name=reward_name, reward=reward_fn, clip=clip, batch_size=int(batch_size))


def describe(dx: Diagnosis) -> str:
    """One Markdown paragraph: what is compared, with which settings."""
    return (f"**Base model:** `{dx.base_model}`. **Tuned model:** {dx.tuned.description}.  \n"
            f"**Prompts:** {len(dx.prompts)} (first: *{dx.prompts[0]}*), {dx.num_seeds} seeds each; "
            f"DDIM {dx.num_steps} steps, eta {dx.eta:g}, guidance {dx.guidance_scale:g}; reward `{dx.reward_name}`.")


# ================================================================================================ the measurements
SYMPTOM_COLUMNS = ("reward_mean", "cross_div_clip", "cross_div_pixel", "within_div_clip", "retrieval_acc",
                   "retrieval_chance", "clip_score")


def symptom(dx: Diagnosis) -> pd.DataFrame:
    """Base and tuned, with the same seeds for every prompt and with a seed per prompt: reward, cross- and
    within-prompt diversity, prompt retrieval; ``cross_div_vs_base`` is tuned / base at the same seed mode."""
    rows = []
    for mode in SEED_MODES:
        dx.base(mode), dx.tuned_images(mode)
        base = dx.measure(f"base/{mode}")
        for model in ("base", "tuned"):
            m = dx.measure(f"{model}/{mode}")
            row = {"model": model, "seeds": SEED_MODES[mode], **{k: m.get(k, float("nan")) for k in SYMPTOM_COLUMNS}}
            row["cross_div_vs_base"] = m["cross_div_clip"] / base["cross_div_clip"] if base["cross_div_clip"] else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def loading_checks(dx: Diagnosis) -> pd.DataFrame:
    """"Is the LoRA even loaded?": one row per check with its value, the threshold and ``ok`` (True/False/None)."""
    from .finetune import param_distance_from_base, snapshot_base_state

    tuned, rows = dx.tuned, []
    if tuned.kind in ("lora", "attn_procs", "unet+lora"):
        rows.append({"check": "layers carrying the LoRA", "value": float(tuned.lora_layers), "threshold": "> 0",
                     "ok": tuned.lora_layers > 0})
    try:
        dist = param_distance_from_base(tuned.unet, snapshot_base_state(dx.base_unet))
    except (KeyError, RuntimeError) as err:
        raise TunedModelError(f"the tuned UNet does not have the base UNet's parameters ({_first_line(err)}): it "
                              "was not fine-tuned from this base model") from err
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


def _curve_row(dx: Diagnosis, name: str, **keys) -> dict[str, Any]:
    m = dx.measure(name)
    return {**keys, "reward_mean": m["reward_mean"], "cross_div_clip": m["cross_div_clip"],
            "retrieval_acc": m["retrieval_acc"], "within_div_clip": m["within_div_clip"]}


def scale_sweep(dx: Diagnosis, scales: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> pd.DataFrame:
    """Reward and diversity (same seeds for every prompt) with the tuned update scaled by each of ``scales``."""
    rows = []
    for s in scales:
        s = float(s)
        if s == 1.0:
            dx.tuned_images("shared")
            name = "tuned/shared"
        else:
            name = f"scale/{s:g}"
            if name not in dx.images:
                with dx.scaled(s) as unet:
                    dx.sample(name, unet=unet)
        rows.append(_curve_row(dx, name, scale=s))
    return pd.DataFrame(rows)


def default_switch_steps(num_steps: int) -> list[int]:
    """0, T/4, T/2, 3T/4 and T base-model steps (rounded, distinct)."""
    return sorted({round(num_steps * f) for f in (0, 0.25, 0.5, 0.75, 1.0)})


def switch_sweep(dx: Diagnosis, switch_steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Reward and diversity (same seeds for every prompt) with the base UNet for the first ``k`` denoising steps and
    the tuned one for the rest, for each ``k`` (0 = the tuned model, ``num_steps`` = the base)."""
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
            dx.sample(name, unet=dx.tuned.unet, first_unet=dx.base_unet, switch_at=k)
        rows.append(_curve_row(dx, name, base_steps=k, base_fraction=k / dx.num_steps))
    return pd.DataFrame(rows)


# ================================================================================================ the verdict
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
        return Verdict("adapter not applied", "adapter not applied: no LoRA tensor matched a layer of this UNet "
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
    if r_same < COLLAPSE_DIVERSITY_RATIO or drop >= COLLAPSE_RETRIEVAL_DROP:
        ignored = t_same["retrieval_acc"] <= IGNORED_RETRIEVAL_FACTOR * chance
        tail = ": the prompts are ignored" if ignored else ""
        if r_diff >= COLLAPSE_DIVERSITY_RATIO and r_same < COLLAPSE_DIVERSITY_RATIO:
            tail += (" (with a seed per prompt the images still differ, so they follow the noise rather than the "
                     "prompt; the same seed for every prompt shows it)")
        return Verdict("loaded and collapsed", f"loaded and collapsed: {numbers}{tail}", warnings)
    noise_ratio = b_same["cross_div_clip"] / b_diff["cross_div_clip"] if b_diff["cross_div_clip"] else float("nan")
    if noise_ratio < SHARED_NOISE_RATIO:
        return Verdict("same noise for every prompt", "same noise for every prompt: the base model's images of "
                       f"different prompts at one seed are already alike ({noise_ratio:.2f} of their diversity with a "
                       f"seed per prompt) and the tuned model is no worse ({numbers}): sample each prompt from its "
                       "own seed", warnings)
    return Verdict("loaded, no collapse", f"loaded, no collapse: {numbers}", warnings)


@dataclass
class Results:
    symptom: pd.DataFrame
    checks: pd.DataFrame
    scale: pd.DataFrame
    switch: pd.DataFrame
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        def records(df):
            return json.loads(df.to_json(orient="records"))

        return {"verdict": str(self.verdict), "label": self.verdict.label, "warnings": self.verdict.warnings,
                "symptom": records(self.symptom), "checks": records(self.checks), "scale_sweep": records(self.scale),
                "switch_sweep": records(self.switch)}


def run_all(dx: Diagnosis, scales: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
            switch_steps: Sequence[int] | None = None) -> Results:
    """Every measurement of the diagnosis and its verdict. When the tuned model is not in effect ("adapter not
    applied") the two sweeps are skipped: every point would be the base model."""
    sym = symptom(dx)
    checks = loading_checks(dx)
    found = verdict(sym, checks)
    if found.label == "adapter not applied":
        empty = pd.DataFrame(columns=["reward_mean", "cross_div_clip", "retrieval_acc", "within_div_clip"])
        return Results(symptom=sym, checks=checks, scale=empty.assign(scale=[]), switch=empty.assign(base_steps=[]),
                       verdict=found)
    return Results(symptom=sym, checks=checks, scale=scale_sweep(dx, scales), switch=switch_sweep(dx, switch_steps),
                   verdict=found)


def thresholds_table() -> pd.DataFrame:
    return pd.DataFrame([{"threshold": k, "value": v, "meaning": m} for k, (v, m) in THRESHOLDS.items()])


def save_results(results: Results, out_dir: str | Path) -> Path:
    """``<out_dir>/diagnose.json``: the verdict and every table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / REPORT_JSON
    path.write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    return path


# ================================================================================================ figures
def fig_tradeoff(scale: pd.DataFrame, switch: pd.DataFrame, title: str = ""):
    """Reward (x) against cross-prompt diversity and against prompt retrieval (y): the LoRA scale sweep and the
    base-for-the-first-k-steps sweep, both from the base model to the tuned one."""
    from matplotlib.figure import Figure

    from .report import style

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


def fig_images(dx: Diagnosis, seeds: str = "shared", max_prompts: int = 8, max_seeds: int = 2):
    """Base and tuned images (rows: base/tuned per seed column; columns: prompts)."""
    from .explore import fig_base_vs_tuned

    base, tuned = dx.base(seeds)[:max_prompts, :max_seeds], dx.tuned_images(seeds)[:max_prompts, :max_seeds]
    grid = dx.seeds(seeds)
    labels = ([str(int(s)) for s in grid[0, :max_seeds]] if seeds == "shared"
              else [f"own per prompt (#{j})" for j in range(base.shape[1])])
    return fig_base_vs_tuned(base, tuned, dx.prompts[:max_prompts], labels,
                             title=f"base vs tuned, {SEED_MODES[seeds]} (columns: prompts)")


# ================================================================================================ the report
def write_report(out_dir: str | Path, base_model: str | None, tuned: str | Path, **params) -> Path:
    """Run ``notebooks/diagnose.ipynb`` with these parameters into ``out_dir`` and write ``diagnose.html`` (no code,
    figures inline: one self-contained page) and ``diagnose.json``. Returns the HTML path.

    ``params`` are the notebook's other parameters (prompts, reward, num_prompts, ...). Inputs are checked here
    first (the tuned model's layout, the prompt set), so a typo fails in one line before a kernel starts.
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from .prompts import load_prompts

    def absolute(value):
        return str(Path(value).resolve()) if value and Path(str(value)).exists() else value

    kind, path = inspect_tuned(tuned)
    if params.get("prompts"):
        load_prompts(params["prompts"])
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    parameters = {"base_model": absolute(base_model) or "", "tuned": str(path.resolve()),
                  "out_dir": str(out), **{k: absolute(v) if k in ("prompts", "clip_model", "aesthetic_model") else v
                                          for k, v in params.items()}}
    notebook = out / REPORT_NOTEBOOK
    try:
        papermill.execute_notebook(str(NOTEBOOK), str(notebook), parameters=parameters, progress_bar=False,
                                   log_output=False, kernel_name="python3", cwd=str(REPO_ROOT))
    except papermill.PapermillExecutionError as err:
        raise DiagnoseError(f"the diagnosis failed: {err.ename}: {_first_line(Exception(err.evalue))} "
                            f"(notebook: {notebook})") from None
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    html = out / REPORT_HTML
    html.write_text(body, encoding="utf-8")
    return html


class DiagnoseError(RuntimeError):
    """The diagnosis notebook failed; the message is its error's last line and where the notebook is."""
