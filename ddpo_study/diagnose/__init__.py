"""Diagnose any fine-tuned checkpoint against its base model: a real cross-prompt collapse, or a loading or seeding bug?

Users of DDPO who see "the same image for every prompt" (huggingface/trl#2113) first need to know which of three
things they are looking at: the weights did not load (trl#2505: a LoRA loaded with ``load_lora_weights`` behaved
like the base model), every prompt was sampled from the same noise (the #2113 inference script seeds once), or the
fine-tuned model really ignores its prompts. This module answers that from the two models alone; nothing here
needs training logs.

Inputs (:func:`prepare`):

* a **base model**: ``toy``, ``sd15``, a diffusers pipeline folder or a hub id (:func:`ddpo_study.models.load_pipeline`);
  or an SD3-type one (``toy-flow``, ``sd35``, a ``StableDiffusion3Pipeline`` folder), whose denoiser is a
  transformer: everything below then works on ``pipe.transformer`` instead of ``pipe.unet``, with the same verdicts;
* a **tuned model**, in any of these forms (:func:`inspect_tuned` tells them apart):

  - a diffusers LoRA: a folder holding ``pytorch_lora_weights.safetensors`` (or ``.bin``), or the file itself.
    That is what our runs keep (``<run>/final/lora``), what TRL's ``DDPOTrainer.save_pretrained`` writes (next to a
    whole pipeline in the same folder) and what its accelerate checkpoints hold. Loaded with diffusers' stock
    ``lora_state_dict`` + ``load_lora_into_unet``, as ``pipe.load_lora_weights`` does; an SD3 LoRA (``transformer.``
    keys: ``StableDiffusion3Pipeline.save_lora_weights``, our flow runs) with ``StableDiffusion3Pipeline``'s
    ``lora_state_dict`` + ``load_lora_into_transformer``;
  - a peft adapter: ``PeftModel.save_pretrained``'s ``adapter_model.safetensors`` (or ``.bin``) with its
    ``adapter_config.json``, what flow_grpo and DiffusionNFT keep in ``checkpoint-N/lora/`` (a folder's ``lora/``
    subfolder is looked into; DiffusionNFT's second adapter in ``lora/old/`` is not read). Its keys are mapped to the
    denoiser's module names whatever their prefix (flow_grpo#87: ``base_model.model.``, ``transformer.`` before or
    after it, an adapter name before ``weight``; :func:`peft_module_keys`);
  - a ddpo-pytorch checkpoint: ``unet.save_attn_procs`` of diffusers 0.17's ``LoRAAttnProcessor`` (keys
    ``<block>.attn1.processor.to_q_lora.down.weight``...; ``pytorch_lora_weights.bin``, ``pytorch_model.bin`` or a
    safetensors file), converted to a peft adapter on our UNet (:func:`attn_procs_to_peft`);
  - a full UNet: a diffusers UNet folder (``config.json`` + ``diffusion_pytorch_model*.safetensors|.bin``; fp16 is
    upcast), or a folder with a ``unet/`` subfolder (a pipeline, TRL's or ddpo-pytorch's full checkpoints); a full
    SD3 transformer likewise (its ``config.json`` says ``_class_name: SD3Transformer2DModel``; ``transformer/``);
  - one of our run folders (``config.json`` + ``metrics.csv``): its final (or latest) weights, its base model,
    reward and sampling settings. A run without weights is an error naming what is missing
    (:class:`~ddpo_study.rundir.MissingWeightsError`): the tuned model is never silently the base.

  ``.bin`` files are read with ``torch.load(weights_only=True)``: a file holding pickled Python objects other than
  tensors is refused with one line (:class:`TunedModelError`), never unpickled; so is a form for the other kind of
  denoiser (a UNet LoRA given to an SD3 base, an SD3 LoRA or transformer folder to a UNet one);
* **prompts**: a prompt set name or file (default: the toy eval prompts for the toy model, ``sd_animals_30``
  otherwise; the first ``num_prompts`` of it).

What it measures (:func:`run_all`), every image drawn with per-image seeds (an image depends only on its prompt,
seed and the weights, see :mod:`ddpo_study.sampler`; an SD3-type base is sampled as its family evaluates,
``algorithm.family_for(pipe)``: the stock pipeline's Euler ODE, :func:`sample_flow`):

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
   set early, so this shows how much diversity the early steps carry and what reward it costs. For SD3, the base
   transformer for the first ``k`` steps of the ODE and the tuned one after (:func:`sample_switched_flow`);
5. **a verdict** (:func:`verdict`) from the thresholds below, with the numbers behind it;
6. for one of our run folders, **is the loaded model the evaluated one?** (:func:`reproduction_check`): its saved
   eval images re-sampled at their prompts and seeds (base vs epoch 0, tuned vs the weights' epoch); near-zero
   differences mean the weights loaded are the model its training evaluated, large ones point at loading.

:func:`write_report` runs ``notebooks/diagnose.ipynb`` (the same calls) through papermill and writes one
self-contained, code-free HTML page; ``python -m ddpo_study diagnose`` is its command line.

Modules: ``loading`` (reading a tuned model in any of the forms above; the refusal of pickled objects),
``sampling`` (the :class:`Diagnosis`: base and tuned sampled at the same prompts and seeds; the switched samplers),
``curves`` (the LoRA-scale and base-for-the-first-k-steps sweeps, their figures), ``checks`` (the symptom, the
loading checks, the reproduction of a run's saved evals, the thresholds and the verdict), ``report`` (everything at
once, ``diagnose.json``, the image grids, the HTML page), ``remedy_sweep`` (the sweeps on a grid's finished runs,
``python -m ddpo_study remedies``; not re-exported). Everything else is re-exported here: use ``diagnose.<name>``.
"""

from .checks import (
    COLLAPSE_DIVERSITY_RATIO,
    COLLAPSE_RETRIEVAL_DROP,
    IGNORED_RETRIEVAL_FACTOR,
    REPRODUCED_LEVELS,
    REWARD_CHANGE_Z,
    SAME_OUTPUT_LEVELS,
    SHARED_NOISE_RATIO,
    SYMPTOM_COLUMNS,
    THRESHOLDS,
    Verdict,
    loading_checks,
    reproduction_check,
    symptom,
    thresholds_table,
    verdict,
)
from .curves import default_switch_steps, fig_scale_images, fig_tradeoff, scale_sweep, scaled_name, switch_sweep
from .loading import (
    FULL_KINDS,
    LORA_FILES,
    LORA_KINDS,
    PEFT_CONFIG,
    PEFT_FILES,
    STATE_FILES,
    TunedModel,
    TunedModelError,
    attn_procs_to_peft,
    inspect_tuned,
    load_tuned,
    peft_module_keys,
    read_state_dict,
)
from .report import (
    NOTEBOOK,
    REPORT_HTML,
    REPORT_JSON,
    REPORT_NOTEBOOK,
    DiagnoseError,
    Results,
    fig_base_vs_tuned,
    fig_images,
    run_all,
    save_results,
    write_report,
)
from .sampling import SEED_MODES, Diagnosis, describe, prepare, sample_flow, sample_switched, sample_switched_flow

__all__ = [
    # loading
    "FULL_KINDS", "LORA_FILES", "LORA_KINDS", "PEFT_CONFIG", "PEFT_FILES", "STATE_FILES", "TunedModel", "TunedModelError",
    "attn_procs_to_peft", "inspect_tuned", "load_tuned", "peft_module_keys", "read_state_dict",
    # sampling
    "SEED_MODES", "Diagnosis", "describe", "prepare", "sample_flow", "sample_switched", "sample_switched_flow",
    # curves
    "default_switch_steps", "fig_scale_images", "fig_tradeoff", "scale_sweep", "scaled_name", "switch_sweep",
    # checks
    "COLLAPSE_DIVERSITY_RATIO", "COLLAPSE_RETRIEVAL_DROP", "IGNORED_RETRIEVAL_FACTOR", "REPRODUCED_LEVELS",
    "REWARD_CHANGE_Z", "SAME_OUTPUT_LEVELS", "SHARED_NOISE_RATIO", "SYMPTOM_COLUMNS", "THRESHOLDS", "Verdict",
    "loading_checks", "reproduction_check", "symptom", "thresholds_table", "verdict",
    # report
    "NOTEBOOK", "REPORT_HTML", "REPORT_JSON", "REPORT_NOTEBOOK", "DiagnoseError", "Results", "fig_base_vs_tuned",
    "fig_images", "run_all", "save_results", "write_report",
]
