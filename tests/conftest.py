"""Shared fixtures: a tiny, randomly initialised Stable Diffusion pipeline built from configs only.

The pipeline has the exact component classes of SD 1.x (UNet2DConditionModel, AutoencoderKL, CLIPTextModel,
DDIMScheduler with SD's config) but a few thousand parameters, so every test runs in well under a second on a
CPU and nothing is fetched from the hub. ``make_tiny_pipe(seed)`` is deterministic: two calls with the same seed
give bit-identical weights, which the LoRA round-trip test relies on (a *fresh* pipeline must equal the base).
"""

from __future__ import annotations

import pytest
import torch

# Few words suffice; the tokenizer is word-level so any prompt made of these words is exact.
WORDS = ["a", "red", "blue", "green", "circle", "square", "triangle", "on", "the", "left", "right", "of"]

# SD 1.x's scheduler config (the one in runwayml/stable-diffusion-v1-5/scheduler), written out.
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def make_tiny_pipe(seed: int = 0, **scheduler_overrides):
    """A tiny ``StableDiffusionPipeline`` on CPU with weights drawn from ``torch.manual_seed(seed)``."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ddpo_study.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            projection_dim=16,
            vocab_size=len(tokenizer),
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(**{**SD_SCHEDULER_CONFIG, **scheduler_overrides})
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    for module in (unet, vae, text_encoder):
        module.eval()
    return pipe


@pytest.fixture
def one_thread():
    """Run the test with one intra-op thread, then restore the setting.

    The tiny models gain nothing from threads, and on a small machine shared with a training job, OpenMP
    threads that spin-wait for a busy core make a sub-second test take tens of seconds.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def module_one_thread():
    """``one_thread`` for a whole test module (use with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def clip(module_one_thread):
    """A tiny random toy-vocabulary CLIP scorer (see ``make_tiny_clip``), shared by a module's tests."""
    return make_tiny_clip()


@pytest.fixture
def tiny_pipe(one_thread):
    """A fresh tiny SD pipeline (seed 0); fresh per test because LoRA/full tests mutate the UNet."""
    return make_tiny_pipe(0)


@pytest.fixture
def tiny_pipe_factory(one_thread):
    """``make_tiny_pipe`` itself, for tests that need several identical fresh pipelines."""
    return make_tiny_pipe


def tiny_clip_model(tokenizer, image_size: int, patch_size: int, hidden: int, projection_dim: int, seed: int):
    """A randomly initialised one-layer ``CLIPModel`` over ``tokenizer``'s vocabulary (seeded)."""
    from transformers import CLIPConfig, CLIPModel

    tok = tokenizer
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=tok.model_max_length,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(image_size=image_size, patch_size=patch_size, num_channels=3, hidden_size=hidden,
                  intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2)
    torch.manual_seed(seed)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).eval()


def make_tiny_clip(seed: int = 0):
    """A ``ClipScorer`` on a random CLIP (32 px, 8 px patches, 16-d projections) over the toy vocabulary."""
    from ddpo_study.models import TOY_CLIP_NORM, ClipScorer
    from ddpo_study.toy import world
    from ddpo_study.toy.tokenizer import build_tokenizer

    tok = build_tokenizer(world.vocabulary())
    return ClipScorer(model=tiny_clip_model(tok, 32, 8, 32, 16, seed), tokenizer=tok, **TOY_CLIP_NORM)


TINY_PROMPTS = ["a red circle", "a blue square", "a green triangle", "a red square on the left",
                "a blue circle on the right", "a green square"]


def make_tiny_model_dir(path, seed: int = 0):
    """Save a tiny pipeline in the toy model's layout (pipeline + ``clip/`` + ``aesthetic/``) under ``path``.

    This is what ``train.run`` loads for ``model=<path>``: the same loaders, rewards and metrics as the real
    toy model and SD, on weights small enough for a unit test.
    """
    from ddpo_study.aesthetic import AestheticMLP
    from ddpo_study.toy.pretrain import save_all

    pipe = make_tiny_pipe(seed)
    tok = pipe.tokenizer
    clip = tiny_clip_model(tok, image_size=16, patch_size=4, hidden=16, projection_dim=8, seed=seed + 1)
    scorer = AestheticMLP(8, hidden=(8,), activation="gelu")
    save_all(path, pipe, clip, scorer, tok, {"tiny": True})
    return path


def tiny_config(model_dir, prompt_files, out, **overrides):
    """A validated ``DDPOConfig`` of a 2-epoch run on the tiny model (``make_tiny_model_dir``) and the prompt
    files of ``tiny_prompt_files``, writing to ``out``; ``overrides`` replace any field."""
    from ddpo_study.config import DDPOConfig

    train_prompts, eval_prompts = prompt_files
    values = dict(
        output_dir=str(out), model=str(model_dir), prompt_set=train_prompts, eval_prompt_set=eval_prompts,
        eval_num_prompts=3, eval_num_seeds=2, eval_every=1, num_steps=4, guidance_scale=2.0,
        samples_per_epoch=8, sample_batch_size=8, train_batch_size=4, num_epochs=2, timestep_fraction=0.5,
        images_per_prompt=2, stat_min_count=2, stat_buffer_size=8, reward="jpeg_compressibility", lora_rank=2,
        lora_alpha=2.0, lora_learning_rate=1e-2, full_learning_rate=1e-3, progressive_switch_epoch=1, num_threads=1,
    )
    values.update(overrides)
    return DDPOConfig.from_dict(values)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    """A file of the tiny prompts, one a line (diagnose's and the monitor's ``--prompts``)."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(TINY_PROMPTS) + "\n")
    return str(path)


@pytest.fixture
def tiny_prompt_files(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(TINY_PROMPTS[:4]) + "\n")
    evals = tmp_path / "eval.txt"
    evals.write_text("\n".join(TINY_PROMPTS[2:]) + "\n")
    return str(train), str(evals)


def make_tiny_sd_layout(root, seed: int = 0):
    """The Stable Diffusion path's file layout, tiny and random: a pipeline folder (no clip/ or aesthetic/
    inside, like the hub's SD 1.5), a separate CLIP folder at 224 px (OpenAI preprocessing, like
    openai/clip-vit-large-patch14), and the aesthetic MLP as a LAION-style pickled state dict (.pth,
    Linear/Dropout layers named layers.{0,2,4,6,7}) that must be read with ``weights_only=True``.
    Returns (pipeline_dir, clip_dir, aesthetic_file)."""
    from pathlib import Path

    from torch import nn

    from ddpo_study.toy.tokenizer import save_tokenizer

    root = Path(root)
    pipe = make_tiny_pipe(seed)
    pipe.save_pretrained(root / "sd", safe_serialization=True)
    save_tokenizer(pipe.tokenizer, root / "sd" / "tokenizer")
    tok = pipe.tokenizer
    clip = tiny_clip_model(tok, image_size=224, patch_size=32, hidden=16, projection_dim=12, seed=seed + 2)
    clip.save_pretrained(root / "clip", safe_serialization=True)
    save_tokenizer(tok, root / "clip")
    laion = nn.Sequential(nn.Linear(12, 10), nn.Dropout(0.2), nn.Linear(10, 8), nn.Dropout(0.2),
                          nn.Linear(8, 6), nn.Dropout(0.1), nn.Linear(6, 4), nn.Linear(4, 1))
    torch.save({f"layers.{k}": v for k, v in laion.state_dict().items()}, root / "aesthetic.pth")
    return root / "sd", root / "clip", root / "aesthetic.pth"


@pytest.fixture(scope="session")
def tiny_sd_layout(tmp_path_factory):
    return make_tiny_sd_layout(tmp_path_factory.mktemp("tiny-sd"))


def make_tiny_sd3_pipe(seed: int = 0, shift: float = 3.0):
    """A tiny ``StableDiffusion3Pipeline`` (no T5: ``text_encoder_3=None``, as diffusers documents) built from
    configs on the toy words' tokenizer: an ``SD3Transformer2DModel`` on 8x8x4 latents, two
    ``CLIPTextModelWithProjection`` encoders, an ``AutoencoderKL`` with a ``shift_factor``, and a
    ``FlowMatchEulerDiscreteScheduler``. Deterministic in ``seed``."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from ddpo_study.toy.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(WORDS)
    torch.manual_seed(seed)
    text = CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
                          projection_dim=16, vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    encoders = [CLIPTextModelWithProjection(text).eval() for _ in range(2)]
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                        caption_projection_dim=16, pooled_projection_dim=32, pos_embed_max_size=8)
    vae = AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=4, sample_size=16,
                        shift_factor=0.1, scaling_factor=1.5, use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                                    vae=vae.eval(), text_encoder=encoders[0], tokenizer=tokenizer,
                                    text_encoder_2=encoders[1], tokenizer_2=tokenizer, text_encoder_3=None,
                                    tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def tiny_sd3_pipe(one_thread):
    return make_tiny_sd3_pipe()


def make_tiny_sd3_model_dir(path, seed: int = 0):
    """Save a tiny SD3 pipeline (``make_tiny_sd3_pipe``) in the toy models' layout (pipeline + ``clip/`` +
    ``aesthetic/``): what ``train.run`` loads for ``model=<path>`` with ``algorithm: flow_grpo``."""
    import json
    from pathlib import Path

    from ddpo_study.aesthetic import AestheticMLP
    from ddpo_study.toy.tokenizer import save_tokenizer

    path = Path(path)
    pipe = make_tiny_sd3_pipe(seed)
    pipe.save_pretrained(path, safe_serialization=True)
    index = json.loads((path / "model_index.json").read_text())
    for name in ("tokenizer", "tokenizer_2"):  # the toy's word-level tokenizer is a fast tokenizer file
        save_tokenizer(pipe.tokenizer, path / name)
        index[name] = ["transformers", "PreTrainedTokenizerFast"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    clip = tiny_clip_model(pipe.tokenizer, image_size=16, patch_size=4, hidden=16, projection_dim=8, seed=seed + 1)
    clip.save_pretrained(path / "clip", safe_serialization=True)
    save_tokenizer(pipe.tokenizer, path / "clip")
    AestheticMLP(8, hidden=(8,), activation="gelu").save(path / "aesthetic")
    return path


@pytest.fixture(scope="session")
def tiny_sd3_model_dir(tmp_path_factory):
    return make_tiny_sd3_model_dir(tmp_path_factory.mktemp("tiny-sd3"))


#: An SD3 transformer's two ways in for the prompt: its text tokens (``context_embedder``) and the pooled text
#: embedding (``time_text_embed.text_embedder.linear_1``).
SD3_TEXT_INPUTS = ("context_embedder", "time_text_embed.text_embedder.linear_1")


def sd3_text_blind_lora_config(transformer):
    """A peft ``LoraConfig`` on :data:`SD3_TEXT_INPUTS` whose rank is their input width (so ``A`` can be ``I``)."""
    from peft import LoraConfig

    width = transformer.config.joint_attention_dim
    assert transformer.config.pooled_projection_dim == width
    return LoraConfig(r=width, lora_alpha=width, target_modules=list(SD3_TEXT_INPUTS))


def blind_sd3_to_text(model, adapter: str = "default"):
    """Fill the adapter of ``sd3_text_blind_lora_config`` with ``A = I``, ``B = -W``: both text inputs give their
    bias whatever the prompt, so every prompt gives the same image at a seed (the #2113 collapse, SD3 version).
    ``model`` is the LoRA-wrapped transformer or a peft model around it."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(SD3_TEXT_INPUTS) and hasattr(module, "lora_A"):
                module.lora_A[adapter].weight.copy_(torch.eye(module.base_layer.in_features))
                module.lora_B[adapter].weight.copy_(-module.base_layer.weight)
    return model.eval().requires_grad_(False)
