"""Reading a tuned model in any of the forms a diagnosis takes, as a UNet next to the base's (left untouched).

:func:`inspect_tuned` tells the forms apart without loading anything: a diffusers / TRL LoRA (``lora``), a peft
``save_pretrained`` adapter (``peft``: ``adapter_model.safetensors`` + ``adapter_config.json``, what flow_grpo and
DiffusionNFT keep in ``checkpoint-N/lora/``), a ddpo-pytorch ``unet.save_attn_procs`` checkpoint (``attn_procs``,
converted to a peft adapter by :func:`attn_procs_to_peft`), a full diffusers UNet folder (``unet``) or one of our
run folders (``run``).
:func:`load_tuned` reads it as a :class:`TunedModel`. ``.bin`` files go through :func:`read_state_dict`
(``torch.load(weights_only=True)``): pickled Python objects other than tensors are refused with one line
(:class:`TunedModelError`), never unpickled.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..finetune import ADAPTER_NAME, LORA_FILE
from ..models import resolve_model
from ..rundir import MODEL_CONFIG_FILE, find_weights, is_run_folder, read_config

#: Names of the files a tuned model may come in (see :mod:`ddpo_study.diagnose`).
LORA_FILES = (LORA_FILE, "pytorch_lora_weights.bin")
STATE_FILES = ("pytorch_model.safetensors", "model.safetensors", "pytorch_model.bin")
#: peft's ``save_pretrained`` layout: the adapter's tensors under ``base_model.model.<module>`` in one of these files,
#: its ``LoraConfig`` (rank, alpha, target layers) in :data:`PEFT_CONFIG` beside it.
PEFT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_CONFIG = "adapter_config.json"
#: The prefix ``PeftModel.save_pretrained`` puts before the wrapped model's module names.
PEFT_PREFIX = "base_model.model."

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
    if path.name in PEFT_FILES:
        if not (path.parent / PEFT_CONFIG).is_file():
            raise TunedModelError(f"{path} is a peft adapter without its {PEFT_CONFIG} beside it (its rank, alpha "
                                  "and target layers are there)")
        return "peft"
    if any(_ATTN_PROC_KEY.fullmatch(k) for k in names):
        return "attn_procs"
    if names and any("lora" in k for k in names):
        return "lora"
    raise TunedModelError(f"{path} holds no LoRA tensors (first keys: {names[:3]}); a full UNet goes in as its "
                          "diffusers folder (config.json + diffusion_pytorch_model.safetensors)")


def _unet_weight_file(folder: Path) -> Path | None:
    """The single weights file of a diffusers UNet folder (None for sharded or absent weights)."""
    if not (folder / MODEL_CONFIG_FILE).is_file():
        return None
    for pattern in ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin"):
        found = sorted(p for p in folder.glob(pattern) if not p.name.endswith(".index.json"))
        if found:
            return found[0]
    return None


def _is_unet_folder(folder: Path) -> bool:
    return _unet_weight_file(folder) is not None or any(folder.glob("diffusion_pytorch_model*.index.json"))


def inspect_tuned(tuned: str | Path) -> tuple[str, Path]:
    """``(kind, path)`` of a tuned model without loading it: kind is ``run``, ``lora`` (diffusers/TRL/ours), ``peft``
    (a peft ``save_pretrained`` adapter), ``attn_procs`` (ddpo-pytorch) or ``unet`` (a full UNet folder); path is the
    file or folder to read. A folder's ``lora/`` subfolder is looked into (flow_grpo's ``checkpoint-N/lora``).

    A registry name (``toy``) is taken as its pipeline folder, whose ``unet/`` is then the "tuned" UNet.
    """
    if not str(tuned).strip():
        raise TunedModelError("no tuned model given")
    path = Path(resolve_model(str(tuned)))
    if not path.exists():
        raise TunedModelError(f"tuned model {tuned}: no such file or folder")
    if path.is_file():
        return _kind_of_file(path), path
    if is_run_folder(path):
        return "run", path
    for name in LORA_FILES + PEFT_FILES:
        if (path / name).is_file():
            return _kind_of_file(path / name), path / name
    if _is_unet_folder(path):
        return "unet", path
    if (path / "lora").is_dir() and (path / "unet").is_dir():
        # our progressive export: the adapter sits on a full-tuned UNet, which only the run folder pairs up
        raise TunedModelError(f"{path} holds both unet/ and lora/ (a progressive run's export): pass its run folder")
    if _is_unet_folder(path / "unet"):
        return "unet", path / "unet"
    if (path / "lora").is_dir():  # flow_grpo's and DiffusionNFT's checkpoint-N/lora/, our final/lora/
        return inspect_tuned(path / "lora")
    for name in STATE_FILES:
        if (path / name).is_file():
            return _kind_of_file(path / name), path / name
    raise TunedModelError(f"{path} holds no tuned weights I can read: looked for {', '.join(LORA_FILES + PEFT_FILES)}, "
                          f"a UNet folder (config.json + diffusion_pytorch_model.*), unet/, lora/ and "
                          f"{', '.join(STATE_FILES)}")


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


def _add_peft_lora(unet, file: Path, adapter: str) -> None:
    """A peft ``save_pretrained`` adapter (``PeftModel`` around the UNet, as flow_grpo and DiffusionNFT train) into
    ``unet``: its ``LoraConfig`` as saved, its tensors without the ``PeftModel`` prefix."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    try:
        config = LoraConfig.from_pretrained(str(file.parent))
    except Exception as err:  # noqa: BLE001 - bad JSON, another adapter type...
        raise TunedModelError(f"{file.parent / PEFT_CONFIG} is not a readable LoRA config ({_first_line(err)})") from err
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in read_state_dict(file).items()}
    config.inference_mode = True
    try:
        unet.add_adapter(config, adapter_name=adapter)
        result = set_peft_model_state_dict(unet, state, adapter_name=adapter)
    except Exception as err:  # noqa: BLE001 - target layers absent, shape mismatch
        raise TunedModelError(f"{file} does not fit this UNet ({_first_line(err)}): was it trained on another base "
                              "model?") from err
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise TunedModelError(f"{file}: tensors that match no LoRA layer of this UNet, e.g. {unexpected[:2]}")
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k and f".{adapter}." in k]
    if missing:  # a half-written or filtered file would leave layers at their init
        raise TunedModelError(f"{file} lacks LoRA tensors of its own config, e.g. {missing[:2]}")
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
    kind: str  #: ``lora``, ``peft``, ``attn_procs``, ``unet`` or ``unet+lora`` (a progressive run)
    unet: Any  #: the UNet to sample with (a LoRA-wrapped copy of the base, or a loaded full UNet)
    adapter: str | None  #: the LoRA adapter's name in ``unet``
    lora_on_base: bool  #: the adapter sits on an unchanged copy of the base: LoRA scale 0 must give the base exactly
    lora_layers: int = 0  #: layers carrying the adapter (0 for a LoRA whose keys matched nothing: not applied)
    run_config: dict | None = None  #: a run folder's config.json
    epoch: int | None = None  #: a run's epoch of the weights

    @property
    def description(self) -> str:
        what = {"lora": "diffusers LoRA", "peft": "peft LoRA (save_pretrained)", "attn_procs": "ddpo-pytorch attention-processor LoRA (converted to peft)",
                "unet": "full UNet", "unet+lora": "full-tuned UNet with a LoRA on top (progressive)"}[self.kind]
        extra = f", {self.lora_layers} LoRA layers" if self.adapter else ""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return f"{what} from {self.source}{extra}{epoch}"


def load_tuned(tuned: str | Path, base_unet, adapter_name: str = ADAPTER_NAME) -> TunedModel:
    """Read ``tuned`` (any form of :func:`inspect_tuned`) as a UNet next to ``base_unet`` (left untouched)."""
    kind, path = inspect_tuned(tuned)
    if kind == "run":
        weights = find_weights(path)
        cfg = read_config(path)
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
    elif kind == "peft":
        _add_peft_lora(unet, path, adapter_name)
    else:
        _add_diffusers_lora(unet, path, adapter_name)
    layers = _lora_layers(unet, adapter_name)
    return TunedModel(source=path, kind=kind, unet=unet.eval(), adapter=adapter_name if layers else None,
                      lora_on_base=True, lora_layers=layers)
