"""Load the models of the study by name or path: the diffusion pipeline and the CLIP-based scorers.

Names (a small registry, like ddpo-pytorch's): ``toy`` is the embedded toy world in ``data/toy-model`` (SD-type);
``toy-flow`` its flow-matching twin in ``data/toy-flow`` (an SD3-type ``StableDiffusion3Pipeline``); ``sd15`` is
Stable Diffusion v1.5 and ``sd35`` Stable Diffusion 3.5 Medium on the model hub. Anything else is taken as a local
diffusers folder (its ``model_index.json`` says which kind) or a hub id (SD-type). SD-type pipelines get a
``DDIMScheduler`` (DDPO's sampler) and no safety checker; SD3-type ones keep their
``FlowMatchEulerDiscreteScheduler`` and load without T5 when the folder has none (diffusers' documented way).

Failures name the path and what is wrong with it, instead of a deep stack trace from diffusers.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .rundir import MODEL_CONFIG_FILE

REPO_ROOT = Path(__file__).resolve().parents[1]
TOY_MODEL_DIR = REPO_ROOT / "data" / "toy-model"
TOY_FLOW_DIR = REPO_ROOT / "data" / "toy-flow"
MODEL_REGISTRY = {
    "toy": str(TOY_MODEL_DIR),
    "toy-flow": str(TOY_FLOW_DIR),
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd35": "stabilityai/stable-diffusion-3.5-medium",
}
#: Hub ids of SD3-type pipelines in the registry (a local folder says its kind in model_index.json).
SD3_HUB_IDS = ("stabilityai/stable-diffusion-3.5-medium",)
SD3_CLASS = "StableDiffusion3Pipeline"
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SD3_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")


class ModelLoadError(RuntimeError):
    """A model folder or id that cannot be loaded; the message names it and the reason."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; any other name (``cpu``, ``cuda``, ``cuda:1``) as given."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_model(name_or_path: str) -> str:
    """Registry name -> path or hub id; other strings are returned unchanged."""
    return MODEL_REGISTRY.get(name_or_path, name_or_path)


def _pipeline_class(path: Path) -> str:
    """The ``_class_name`` of a local pipeline folder's ``model_index.json`` (one clear error if it has none)."""
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(f"{path} is not a diffusers pipeline folder: {index.name} is missing")
    try:
        return str(json.loads(index.read_text()).get("_class_name", ""))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{index} is not valid JSON ({err})") from err


def _check_pipeline_dir(path: Path) -> str:
    """Check a local pipeline folder has its components; returns its pipeline class name."""
    cls = _pipeline_class(path)
    components = json.loads((path / "model_index.json").read_text())
    needed = SD3_COMPONENTS if cls == SD3_CLASS else PIPELINE_COMPONENTS
    missing = [c for c in needed if c not in components or not (path / c).is_dir()]
    if missing:
        kind = "an SD3" if cls == SD3_CLASS else "a Stable Diffusion"
        raise ModelLoadError(f"{kind} pipeline folder {path} lacks the component folder(s) {missing}")
    return cls


def check_local_pipeline(name_or_path: str) -> str | None:
    """For a local folder (a path, or a registry name's folder), that it exists and is a pipeline folder with its
    components (:class:`ModelLoadError` otherwise), and its pipeline class; nothing is loaded, and a hub id passes
    unchecked (None)."""
    target = resolve_model(name_or_path)
    path = Path(target)
    if not (path.exists() or name_or_path in ("toy", "toy-flow") or target.startswith((".", "/"))):
        return None
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} does not exist" + (
            " (build the toy model with `python -m ddpo_study.toy.pretrain`)" if name_or_path == "toy" else "")
            + (" (build it with `make toy-flow`)" if name_or_path == "toy-flow" else ""))
    return _check_pipeline_dir(path)


def is_sd3(name_or_path: str) -> bool:
    """Whether ``name_or_path`` (registry name, folder or hub id) is an SD3-type (flow-matching) pipeline."""
    target = resolve_model(name_or_path)
    path = Path(target)
    if (path / "model_index.json").is_file():
        return _pipeline_class(path) == SD3_CLASS
    return target in SD3_HUB_IDS


def load_pipeline(name_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The pipeline of ``name_or_path``, frozen, on ``device`` in ``dtype``: a ``StableDiffusionPipeline`` with a
    DDIM scheduler, or a ``StableDiffusion3Pipeline`` (see the module docstring).

    ``dtype`` applies to the frozen weights (fp16/bf16 on GPU is fine); trainable weights are made fp32 by
    :mod:`ddpo_study.finetune` regardless.
    """
    from diffusers import DDIMScheduler, StableDiffusion3Pipeline, StableDiffusionPipeline

    target = resolve_model(name_or_path)
    path = Path(target)
    local_cls = check_local_pipeline(name_or_path)
    local = local_cls is not None
    cls = local_cls or (SD3_CLASS if target in SD3_HUB_IDS else "StableDiffusionPipeline")
    sd3 = cls == SD3_CLASS
    # SD3 folders without T5 (the toy's) load with text_encoder_3=None, as diffusers documents
    no_t5 = sd3 and local and not (path / "text_encoder_3").is_dir()
    try:
        # `torch_dtype` works on every supported diffusers (0.42 prefers `dtype` and warns).
        warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
        if sd3:
            extra = dict(text_encoder_3=None, tokenizer_3=None) if no_t5 else {}
            pipe = StableDiffusion3Pipeline.from_pretrained(target, torch_dtype=dtype, local_files_only=local, **extra)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(
                target, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
                local_files_only=local,
            )
    except Exception as err:  # diffusers raises many types; the caller needs the path and the cause
        kind = "an SD3" if sd3 else "a Stable Diffusion"
        raise ModelLoadError(f"could not load {kind} pipeline from {target!r}: {str(err).splitlines()[0]}") from err
    if sd3:
        frozen = (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3)
        from .sd3_padding import collapse_t5_padding

        collapse_t5_padding(pipe)  # no T5: our samplers may run its zero padding as one token
    else:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        frozen = (pipe.unet, pipe.vae, pipe.text_encoder)
    for module in frozen:
        if module is not None:
            module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@dataclass
class ClipScorer:
    """A CLIP model plus how images must be prepared for it.

    ``image_size``/``mean``/``std`` reproduce ``CLIPImageProcessor`` in torch (resize, normalise), so
    scoring stays on the tensor path; for the toy CLIP they are its native 32 px and a [-1, 1] mapping.
    """

    model: "torch.nn.Module"
    tokenizer: object
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0,1] images (B,3,H,W) -> CLIP pixel values."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    @torch.no_grad()
    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised projected image embeddings (B, D)."""
        device = next(self.model.parameters()).device
        out = self.model.get_image_features(pixel_values=self.preprocess(images.to(device).float()))
        return getattr(out, "pooler_output", out)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        out = self.model.get_text_features(input_ids=ids)
        return getattr(out, "pooler_output", out)


#: Toy CLIP preprocessing: native 32 px, [0,1] -> [-1,1].
TOY_CLIP_NORM = dict(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
#: OpenAI CLIP preprocessing constants (CLIPImageProcessor defaults).
OPENAI_CLIP_NORM = dict(image_size=224, mean=(0.48145466, 0.4578275, 0.40821073),
                        std=(0.26862954, 0.26130258, 0.27577711))


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
    """A CLIP scorer from a local folder (``clip/`` of the toy model) or a hub id such as openai/clip-vit-large-patch14."""
    from transformers import AutoTokenizer, CLIPModel

    path_s = str(path)
    local = Path(path_s).exists()
    if local and not (Path(path_s) / MODEL_CONFIG_FILE).is_file():
        raise ModelLoadError(f"CLIP folder {path_s} has no {MODEL_CONFIG_FILE}")
    try:
        model = CLIPModel.from_pretrained(path_s, local_files_only=local).to(device).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(path_s, local_files_only=local)
    except Exception as err:
        raise ModelLoadError(f"could not load CLIP from {path_s!r}: {err}") from err
    norm = TOY_CLIP_NORM if model.config.vision_config.image_size <= 64 else OPENAI_CLIP_NORM
    norm = dict(norm, image_size=model.config.vision_config.image_size)
    return ClipScorer(model=model, tokenizer=tokenizer, **norm)


def load_aesthetic(path: str | Path, device: str | torch.device = "cpu"):
    """An aesthetic MLP: a folder (config.json + model.safetensors, the toy scorer) or a LAION predictor file."""
    from .aesthetic import AestheticMLP, load_laion_aesthetic

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"aesthetic predictor path {path} does not exist")
    try:
        model = AestheticMLP.load(path) if path.is_dir() else load_laion_aesthetic(path)
        return model.to(device)
    except Exception as err:
        raise ModelLoadError(f"could not load the aesthetic predictor from {path}: {err}") from err


def load_scorers(cfg, device: torch.device):
    """The CLIP scorer, aesthetic MLP and (if available) LPIPS that rewards and metrics use, for ``cfg``'s model.

    The toy model ships its own CLIP and aesthetic scorer (``clip/``, ``aesthetic/`` beside the pipeline); other
    models use ``cfg.clip_model`` / ``cfg.aesthetic_model`` or, for CLIP, OpenAI's ViT-L/14. Returns
    ``(clip, aesthetic or None, lpips or None, lpips warning or "")``.
    """
    from .metrics import maybe_load_lpips

    model_dir = Path(resolve_model(cfg.model))
    clip_path = cfg.clip_model or (str(model_dir / "clip") if (model_dir / "clip").is_dir()
                                   else "openai/clip-vit-large-patch14")
    clip = load_clip(clip_path, device)
    aesthetic_path = cfg.aesthetic_model or (str(model_dir / "aesthetic") if (model_dir / "aesthetic").is_dir() else "")
    aesthetic = load_aesthetic(aesthetic_path, device) if aesthetic_path else None
    lpips_model, lpips_warning = maybe_load_lpips(device)
    return clip, aesthetic, lpips_model, lpips_warning


def frozen_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """The dtype of a run's frozen weights: fp32 on the CPU or without mixed precision, else fp16/bf16."""
    if device.type == "cpu" or mixed_precision == "no":
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]
