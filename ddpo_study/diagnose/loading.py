"""Reading a tuned model in any of the forms a diagnosis takes, as a denoiser next to the base's (left untouched):
a UNet for SD-type base models, an ``SD3Transformer2DModel`` for SD3-type ones.

:func:`inspect_tuned` tells the forms apart without loading anything: a diffusers / TRL LoRA (``lora``; an SD3 one
has ``transformer.`` keys, as ``StableDiffusion3Pipeline.save_lora_weights`` and our flow runs write), a peft
``save_pretrained`` adapter (``peft``: ``adapter_model.safetensors`` + ``adapter_config.json``, what flow_grpo and
DiffusionNFT keep in ``checkpoint-N/lora/``), a ddpo-pytorch ``unet.save_attn_procs`` checkpoint (``attn_procs``,
converted to a peft adapter by :func:`attn_procs_to_peft`), a full diffusers UNet folder (``unet``) or SD3
transformer folder (``transformer``; its ``config.json`` says ``SD3Transformer2DModel``) or one of our run folders
(``run``).
:func:`load_tuned` reads it as a :class:`TunedModel` onto a copy of the base's denoiser. A form for the other kind
of denoiser (a UNet LoRA given to an SD3 base, a transformer folder to a UNet one) is one line
(:class:`TunedModelError`), as is ``.bin`` files holding pickled Python objects other than tensors: they go through
:func:`read_state_dict` (``torch.load(weights_only=True)``) and are never unpickled.

peft adapters' key prefixes (flow_grpo#87): ``save_pretrained`` of a ``PeftModel`` around the transformer writes
``base_model.model.<module>...``; files re-saved by other tools may add or keep the pipeline's component prefix
(``transformer.base_model.model.<module>``, ``base_model.model.transformer.<module>``, ``transformer.<module>``) or
the adapter's name (``lora_A.default.weight``). :func:`peft_module_keys` maps all of them to ``<module>.lora_A.weight``.
"""

from __future__ import annotations

import copy
import json
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
#: The kinds of :func:`inspect_tuned` / :class:`TunedModel` that carry a LoRA, and the full-weight ones.
LORA_KINDS = ("lora", "peft", "attn_procs", "unet+lora", "transformer+lora")
FULL_KINDS = ("unet", "transformer")
#: The diffusers class of each kind of denoiser (a full folder's ``config.json`` names it as ``_class_name``).
DENOISER_CLASSES = {"unet": "UNet2DConditionModel", "transformer": "SD3Transformer2DModel"}
#: How a diagnosis names each kind of denoiser in its messages (and with its article).
DENOISER_NAMES = {"unet": "UNet", "transformer": "SD3 transformer"}
_A_DENOISER = {"unet": "a UNet", "transformer": "an SD3 transformer"}
_A_CLASS = {"unet": "a UNet2DConditionModel", "transformer": "an SD3Transformer2DModel"}

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
    raise TunedModelError(f"{path} holds no LoRA tensors (first keys: {names[:3]}); full weights go in as their "
                          "diffusers folder (config.json + diffusion_pytorch_model.safetensors)")


def _model_weight_file(folder: Path) -> Path | None:
    """The single weights file of a diffusers model folder (None for sharded or absent weights)."""
    if not (folder / MODEL_CONFIG_FILE).is_file():
        return None
    for pattern in ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin"):
        found = sorted(p for p in folder.glob(pattern) if not p.name.endswith(".index.json"))
        if found:
            return found[0]
    return None


def _is_model_folder(folder: Path) -> bool:
    """A diffusers model folder: ``config.json`` and ``diffusion_pytorch_model*`` weights (one file or shards)."""
    return _model_weight_file(folder) is not None or (
        (folder / MODEL_CONFIG_FILE).is_file() and any(folder.glob("diffusion_pytorch_model*.index.json")))


def _model_class(folder: Path) -> str:
    """The ``_class_name`` of a diffusers model folder's ``config.json`` ("" when it names none)."""
    try:
        config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TunedModelError(f"{folder / MODEL_CONFIG_FILE} is not a readable model config ({_first_line(err)})") \
            from None
    return str(config.get("_class_name", "")) if isinstance(config, dict) else ""


def _full_kind(folder: Path) -> str:
    """``transformer`` for an SD3 transformer folder, else ``unet`` (a UNet, or a folder that then fails to load
    as one, with its reason)."""
    return "transformer" if _model_class(folder) == DENOISER_CLASSES["transformer"] else "unet"


def inspect_tuned(tuned: str | Path) -> tuple[str, Path]:
    """``(kind, path)`` of a tuned model without loading it: kind is ``run``, ``lora`` (diffusers/TRL/ours), ``peft``
    (a peft ``save_pretrained`` adapter), ``attn_procs`` (ddpo-pytorch), ``unet`` (a full UNet folder) or
    ``transformer`` (a full SD3 transformer folder); path is the file or folder to read. A folder's ``lora/``
    subfolder is looked into (flow_grpo's and DiffusionNFT's ``checkpoint-N/lora``), and a pipeline folder's
    ``unet/`` or ``transformer/``.

    A registry name (``toy``, ``toy-flow``) is taken as its pipeline folder, whose denoiser is then the "tuned" one.
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
    if _is_model_folder(path):
        return _full_kind(path), path
    for sub in FULL_KINDS:
        if (path / "lora").is_dir() and (path / sub).is_dir():
            # our progressive export: the adapter sits on a full-tuned network, which only the run folder pairs up
            raise TunedModelError(f"{path} holds both {sub}/ and lora/ (a progressive run's export): pass its run "
                                  "folder")
    for sub in FULL_KINDS:
        if _is_model_folder(path / sub):
            return _full_kind(path / sub), path / sub
    if (path / "lora").is_dir():  # flow_grpo's and DiffusionNFT's checkpoint-N/lora/, our final/lora/
        return inspect_tuned(path / "lora")
    for name in STATE_FILES:
        if (path / name).is_file():
            return _kind_of_file(path / name), path / name
    raise TunedModelError(f"{path} holds no tuned weights I can read: looked for {', '.join(LORA_FILES + PEFT_FILES)}, "
                          f"a UNet or SD3 transformer folder (config.json + diffusion_pytorch_model.*), unet/, "
                          f"transformer/, lora/ and {', '.join(STATE_FILES)}")


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


def denoiser_kind(model) -> str:
    """``unet`` or ``transformer`` (an ``SD3Transformer2DModel``): the kind of a base model's denoiser."""
    return "transformer" if type(model).__name__ == DENOISER_CLASSES["transformer"] else "unet"


def _what(model) -> str:
    return f"this {DENOISER_NAMES[denoiser_kind(model)]}"


def _add_attn_procs_lora(unet, file: Path, adapter: str) -> None:
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    peft_sd, ranks = attn_procs_to_peft(read_state_dict(file))
    own = {name for name, _ in unet.named_modules()}
    absent = sorted(set(ranks) - own)
    if absent:
        raise TunedModelError(f"{file}: its LoRA layers do not exist in {_what(unet)} (e.g. {absent[0]}): was it "
                              "trained on another base model? (a ddpo-pytorch checkpoint is a UNet's)")
    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: r for m, r in ranks.items() if r != rank}
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(ranks), rank_pattern=pattern,
                        alpha_pattern=dict(pattern), init_lora_weights=True)
    unet.add_adapter(config, adapter_name=adapter)
    try:
        result = set_peft_model_state_dict(unet, peft_sd, adapter_name=adapter)
    except RuntimeError as err:  # shape mismatch
        raise TunedModelError(f"{file} does not fit {_what(unet)} ({_first_line(err)})") from err
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise TunedModelError(f"{file}: tensors that match no LoRA layer of {_what(unet)}, e.g. {unexpected[:2]}")
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.requires_grad_(False)


#: A key's adapter name between ``lora_A``/``lora_B`` and ``weight`` (a ``state_dict()`` of a wrapped model, not
#: ``save_pretrained``'s): ``....lora_A.default.weight``.
_ADAPTER_IN_KEY = re.compile(r"\.(lora_[AB])\.[^.]+\.weight$")
#: Pipeline components whose LoRA tensors a diagnosis does not load (it swaps the denoiser only).
TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.", "text_encoder_3.")


def _refuse_other_components(file: Path, keys, kind: str) -> None:
    """One line when ``keys`` are another denoiser's (``unet.`` keys for an SD3 base, ``transformer.`` for a UNet)
    or, for an SD3 base, also adapt its text encoders (which a diagnosis would silently leave out)."""
    other = next(k for k in FULL_KINDS if k != kind)
    own_keys = [k for k in keys if k.startswith(f"{kind}.")]
    foreign = [k for k in keys if k.startswith(f"{other}.")]
    if foreign and not own_keys:
        raise TunedModelError(f"{file} is a LoRA for {_A_DENOISER[other]} (keys {foreign[0]}, ...), but the base "
                              f"model's denoiser is {_A_DENOISER[kind]}: pass the base model it was trained on "
                              "(--base)")
    text = [k for k in keys if k.startswith(TEXT_ENCODER_PREFIXES)]
    if text and kind == "transformer":
        raise TunedModelError(f"{file} also adapts the text encoders (e.g. {text[0]}); a diagnosis loads the "
                              "transformer's LoRA only, so it would not be the model you sample: save the "
                              "transformer's adapter alone")


def peft_module_keys(state: dict[str, torch.Tensor], kind: str = "transformer",
                     file: Path | str = "the adapter") -> dict[str, torch.Tensor]:
    """A peft adapter's tensors under the names ``set_peft_model_state_dict`` takes on the bare denoiser
    (``<module>.lora_A.weight``), whatever prefixes the file has (flow_grpo#87): ``base_model.model.`` (peft's
    ``save_pretrained``), the pipeline component's (``transformer.``/``unet.``, ``kind``'s) in either order, and an
    adapter name before ``weight``. Another denoiser's prefix is refused (:func:`_refuse_other_components`)."""
    own = f"{kind}."
    out = {}
    for key, value in state.items():
        name, before = key, None
        while name != before:
            before = name
            name = name.removeprefix(PEFT_PREFIX).removeprefix(own)
        out[_ADAPTER_IN_KEY.sub(r".\1.weight", name)] = value
    _refuse_other_components(Path(file), list(out), kind)
    return out


def _add_peft_lora(unet, file: Path, adapter: str) -> None:
    """A peft ``save_pretrained`` adapter (``PeftModel`` around the UNet or transformer, as flow_grpo and
    DiffusionNFT train) into ``unet``: its ``LoraConfig`` as saved, its tensors under the denoiser's own module names
    (:func:`peft_module_keys`)."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    try:
        config = LoraConfig.from_pretrained(str(file.parent))
    except Exception as err:  # noqa: BLE001 - bad JSON, another adapter type...
        raise TunedModelError(f"{file.parent / PEFT_CONFIG} is not a readable LoRA config ({_first_line(err)})") from err
    state = peft_module_keys(read_state_dict(file), denoiser_kind(unet), file)
    config.inference_mode = True
    try:
        unet.add_adapter(config, adapter_name=adapter)
        result = set_peft_model_state_dict(unet, state, adapter_name=adapter)
    except Exception as err:  # noqa: BLE001 - target layers absent, shape mismatch
        raise TunedModelError(f"{file} does not fit {_what(unet)} ({_first_line(err)}): was it trained on another "
                              "base model?") from err
    unexpected = getattr(result, "unexpected_keys", []) or []
    if unexpected:
        raise TunedModelError(f"{file}: tensors that match no LoRA layer of {_what(unet)}, e.g. {unexpected[:2]}: "
                              "was it trained on another base model?")
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k and f".{adapter}." in k]
    if missing:  # a half-written or filtered file would leave layers at their init
        raise TunedModelError(f"{file} lacks LoRA tensors of its own config, e.g. {missing[:2]}")
    for name, p in unet.named_parameters():
        if "lora_" in name:
            p.requires_grad_(False)


def _add_diffusers_lora(unet, file: Path, adapter: str) -> None:
    """diffusers' stock path (what ``pipe.load_lora_weights`` runs) into ``unet``: ``load_lora_into_unet`` for a
    UNet, ``StableDiffusion3Pipeline.load_lora_into_transformer`` for an SD3 transformer."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionPipeline

    kind = denoiser_kind(unet)
    names = _tensor_names(file)
    _refuse_other_components(file, names, kind)
    try:
        if kind == "transformer":
            source = str(file.parent) if file.suffix == ".safetensors" else read_state_dict(file)
            extra = dict(weight_name=file.name, local_files_only=True) if file.suffix == ".safetensors" else {}
            state_dict, metadata = StableDiffusion3Pipeline.lora_state_dict(source, return_lora_metadata=True, **extra)
            if not any(k.startswith("transformer.") for k in state_dict):  # peft's own names, no component prefix
                state_dict = {f"transformer.{k}": v for k, v in state_dict.items()}
            StableDiffusion3Pipeline.load_lora_into_transformer(state_dict, transformer=unet, adapter_name=adapter,
                                                                metadata=metadata)
        elif file.suffix == ".safetensors":  # read from the file, so the adapter's LoraConfig metadata is used
            state_dict, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
                str(file.parent), weight_name=file.name, return_lora_metadata=True, local_files_only=True)
            StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=unet, adapter_name=adapter,
                                                        metadata=metadata)
        else:
            state_dict, alphas, metadata = StableDiffusionPipeline.lora_state_dict(
                read_state_dict(file), return_lora_metadata=True)
            StableDiffusionPipeline.load_lora_into_unet(state_dict, alphas, unet=unet, adapter_name=adapter,
                                                        metadata=metadata)
    except TunedModelError:
        raise
    except Exception as err:  # noqa: BLE001 - diffusers/peft raise many types for a file that does not fit
        raise TunedModelError(f"could not load the LoRA {file} into {_what(unet)} ({_first_line(err)})") from err


def _load_model_folder(folder: Path, like) -> Any:
    """A full diffusers UNet or SD3 transformer folder (the class of ``like``, the base's denoiser), in the dtype
    and on the device of ``like``; a folder of another class is one line."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    kind = denoiser_kind(like)
    cls = SD3Transformer2DModel if kind == "transformer" else UNet2DConditionModel
    found = _model_class(folder)
    if found and found != cls.__name__:
        raise TunedModelError(f"{folder} holds a full {found}, but the base model's denoiser is {_A_CLASS[kind]}: "
                              "pass the base model it was trained on (--base)")
    weights = _model_weight_file(folder)
    try:
        if weights is None:  # sharded: diffusers reads the index (safetensors, or .bin with weights_only=True)
            model = cls.from_pretrained(str(folder), local_files_only=True)
        else:
            model = cls.from_config(cls.load_config(str(folder)))
            result = model.load_state_dict(read_state_dict(weights), strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise TunedModelError(f"{weights} does not match its config.json: missing {result.missing_keys[:2]}, "
                                      f"unexpected {result.unexpected_keys[:2]}")
    except TunedModelError:
        raise
    except Exception as err:  # noqa: BLE001
        raise TunedModelError(f"could not load the {DENOISER_NAMES[kind]} folder {folder} ({_first_line(err)})") \
            from err
    # nn.Module.to: diffusers' own .to(dtype=...) logs a float32-modules warning into the report
    return torch.nn.Module.to(model, device=like.device, dtype=like.dtype).eval().requires_grad_(False)


@dataclass
class TunedModel:
    """The tuned denoiser (a UNet, or an SD3 transformer) next to the base's, and how it was read."""

    source: Path  #: the file or folder read
    kind: str  #: ``lora``, ``peft``, ``attn_procs``, ``unet``/``transformer`` or ``unet+lora``/``transformer+lora``
    unet: Any  #: the denoiser to sample with (a LoRA-wrapped copy of the base's, or loaded full weights)
    adapter: str | None  #: the LoRA adapter's name in ``unet``
    lora_on_base: bool  #: the adapter sits on an unchanged copy of the base: LoRA scale 0 must give the base exactly
    lora_layers: int = 0  #: layers carrying the adapter (0 for a LoRA whose keys matched nothing: not applied)
    run_config: dict | None = None  #: a run folder's config.json
    epoch: int | None = None  #: a run's epoch of the weights

    @property
    def denoiser(self):
        """The tuned UNet or SD3 transformer (``unet``, by its older name)."""
        return self.unet

    @property
    def description(self) -> str:
        what = {"lora": "diffusers LoRA", "peft": "peft LoRA (save_pretrained)",
                "attn_procs": "ddpo-pytorch attention-processor LoRA (converted to peft)", "unet": "full UNet",
                "transformer": "full SD3 transformer",
                "unet+lora": "full-tuned UNet with a LoRA on top (progressive)",
                "transformer+lora": "full-tuned SD3 transformer with a LoRA on top (progressive)"}[self.kind]
        extra = f", {self.lora_layers} LoRA layers" if self.adapter else ""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return f"{what} from {self.source}{extra}{epoch}"


def load_tuned(tuned: str | Path, base_unet, adapter_name: str = ADAPTER_NAME) -> TunedModel:
    """Read ``tuned`` (any form of :func:`inspect_tuned`) as a denoiser next to ``base_unet`` (the base pipeline's
    UNet or SD3 transformer, left untouched)."""
    kind, path = inspect_tuned(tuned)
    net = denoiser_kind(base_unet)
    if kind == "run":
        weights = find_weights(path)
        cfg = read_config(path)
        unet = _load_model_folder(weights.unet, base_unet) if weights.unet is not None else copy.deepcopy(base_unet)
        adapter = None
        if weights.lora is not None:
            _add_diffusers_lora(unet, weights.lora / LORA_FILES[0], adapter_name)
            adapter = adapter_name
        kind = f"{net}+lora" if weights.unet is not None and weights.lora is not None else (
            net if weights.unet is not None else "lora")
        return TunedModel(source=path, kind=kind, unet=unet.eval(), adapter=adapter,
                          lora_on_base=weights.unet is None,
                          lora_layers=_lora_layers(unet, adapter_name) if adapter else 0, run_config=cfg,
                          epoch=weights.epoch)
    if kind in FULL_KINDS:
        return TunedModel(source=path, kind=kind, unet=_load_model_folder(path, base_unet), adapter=None,
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
