# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One DDPO run (a grid cell)
#
# Trains one configuration with `ddpo_study.train.run` and reports what it did: reward, diversity, PPO statistics and the evaluation images. Source: `notebooks/cell.py` (jupytext-paired with `cell.ipynb`); run by `python -m ddpo_study grid run SPEC` through papermill.

# %% tags=["parameters"]
# Every DDPOConfig field (ddpo_study/config.py); a grid spec or papermill -p overrides any of them.
output_dir = 'runs/default'  # Folder that holds everything this run writes (config, metrics, eval images, checkpoints).
seed = 0  # Seed of the run: all sampling noise, prompt draws and timestep draws derive from it and the epoch.
model = 'toy'  # Pipeline to fine-tune: 'toy', 'sd15', a local diffusers folder or a hub id.
clip_model = ''  # CLIP used by rewards and metrics; '' means the toy model's clip/ folder for 'toy', else openai/clip-vit-large-patch14.
aesthetic_model = ''  # Aesthetic predictor weights; '' means the toy model's aesthetic/ folder for 'toy' (LAION file for SD).
device = 'auto'  # 'auto' (cuda if available), 'cpu' or 'cuda'.
mixed_precision = 'no'  # Precision of the frozen weights and forward passes: 'no', 'fp16', 'bf16'; trainable weights stay fp32.
num_threads = 0  # CPU threads for torch (0 means torch's default); the grid runner sets 1 per cell when it runs cells in parallel.
prompt_set = 'toy_30'  # Training prompts: a registered set name (see ddpo_study.prompts) or a text file, one prompt per line.
eval_prompt_set = 'toy_eval'  # Held-out prompts for evaluation (name or file).
eval_num_prompts = 16  # How many eval prompts (the first N of the set) are sampled at each evaluation.
eval_num_seeds = 4  # Fixed seeds per eval prompt (seeds EVAL_SEED_BASE .. EVAL_SEED_BASE+N-1, the same in every run).
eval_every = 5  # Evaluate every N epochs (and always at epoch 0 and at the last epoch).
num_steps = 20  # DDIM steps per image.
guidance_scale = 5.0  # Classifier-free guidance scale (1.0 means no guidance); 5.0 as DDPO, and where the toy base model meets its prompt-following bar.
eta = 1.0  # DDIM eta: 1.0 makes every step stochastic, which the policy-gradient needs (0 would make log-probs degenerate).
samples_per_epoch = 64  # Images sampled per epoch (all processes together).
images_per_prompt = 8  # Images per drawn prompt in an epoch (a group sharing one prompt); 1 means DDPO's independent uniform draws.
sample_batch_size = 32  # Images per sampling batch (per process).
num_epochs = 20  # Epochs of sample -> reward -> PPO update.
mode = 'lora'  # Which weights train: 'lora', 'full' (all UNet weights) or 'progressive' (full, then LoRA on top).
progressive_switch_epoch = 5  # Progressive mode: epochs of full fine-tuning before the switch to LoRA on the updated weights.
lora_rank = 4  # LoRA rank r.
lora_target_modules = 'to_q,to_k,to_v,to_out.0'  # Comma-separated UNet modules that get a LoRA (peft's suffix match: 'to_k' means every key projection, 'attn2.to_k' means cross-attention keys only).
lora_alpha = 4.0  # LoRA alpha (the update is scaled by alpha / r).
init_lora = ''  # LoRA mode: a diffusers LoRA file or folder (a run's final/lora) the adapter starts from (not a zero update); epoch 0 is then that adapter.
lora_learning_rate = 0.0003  # AdamW learning rate for LoRA parameters.
full_learning_rate = 3e-05  # AdamW learning rate for full fine-tuning (all UNet weights).
adam_beta1 = 0.9  # AdamW beta1.
adam_beta2 = 0.999  # AdamW beta2.
adam_weight_decay = 0.0001  # AdamW decoupled weight decay.
adam_epsilon = 1e-08  # AdamW epsilon.
train_batch_size = 16  # Samples per PPO minibatch (each contributes timestep_fraction x num_steps transitions).
gradient_accumulation_steps = 1  # Minibatches whose gradients are summed before one optimizer step.
train_timesteps_per_pass = 0  # Timesteps scored per UNet call in the PPO pass (0 means all selected steps of a minibatch at once; lower saves memory).
inner_epochs = 1  # PPO passes over each epoch's samples.
timestep_fraction = 0.5  # Fraction of each trajectory's DDIM steps used for training (a fresh random subset per sample).
clip_range = 0.0001  # PPO ratio clip epsilon (ddpo-pytorch's default).
adv_clip_max = 5.0  # Advantages are clipped to [-adv_clip_max, adv_clip_max].
max_grad_norm = 1.0  # Gradient-norm clipping threshold.
per_prompt_stat_tracking = True  # Normalise rewards per prompt (ddpo-pytorch's default; TRL's default was off) instead of per batch.
stat_buffer_size = 8  # Per-prompt stat tracking: rewards remembered per prompt (: images_per_prompt: each group is its own baseline).
stat_min_count = 8  # Per-prompt stat tracking: below this many rewards a prompt uses the batch mean/std.
kl_beta = 0.0  # Weight of the KL-to-base penalty on the sampled transitions (DPOK-style); 0 disables it.
target_kl = 0.0  # Step controller: adapt the lr so each optimizer step moves the policy by this KL (per latent dim, on a probe of the epoch's transitions); 0 means fixed lr.
reward = 'aesthetic'  # Reward name from ddpo_study.rewards (aesthetic, jpeg_compressibility, jpeg_incompressibility, clip_alignment).
diversity_lambda = 0.0  # Diversity penalty weight: reward - lambda * similarity to other images; 0 disables it.
diversity_form = 'cross_prompt'  # Diversity penalty partners: 'cross_prompt' (other prompts in the batch) or 'within_prompt' (same prompt).
diversity_feature = 'clip'  # Feature space of the similarity: 'clip', 'lpips' or 'pixel'.
checkpoint_every = 1  # Write a resumable checkpoint every N epochs (and at the end).
log_with = ''  # Also log each epoch's row to an accelerate tracker ('tensorboard', 'wandb', ...; '' means metrics.csv only).

# %% [markdown]
# ## Configuration
#
# The keys that differ from the defaults (the cell's place in the grid).

# %%
# %matplotlib inline
import os

from ddpo_study import report
from ddpo_study.models import REPO_ROOT

os.chdir(REPO_ROOT)  # paths are relative to the repository root, in JupyterLab as under papermill
report.notebook_setup()  # no loading bars or deprecation chatter in the report

import dataclasses

from IPython.display import display

from ddpo_study import train
from ddpo_study.config import DDPOConfig

# every parameter above is a DDPOConfig field (tests/test_notebooks.py checks that they match)
cfg = DDPOConfig.from_dict({f.name: globals()[f.name] for f in dataclasses.fields(DDPOConfig)})
report.config_diff(cfg)

# %% [markdown]
# ## Training
#
# Resumes from `checkpoints/latest` when the run was interrupted.

# %%
out = train.run(cfg, progress=False)  # no progress bar: it would show as a red stderr box in the report

# %% [markdown]
# ## Reward and diversity
#
# Eval reward and the reward of each epoch's training batch; within-prompt (same prompt, different seeds) and cross-prompt (same seed, different prompts) diversity; how often CLIP retrieves an image's own prompt among the eval prompts.

# %%
figures = report.cell_figures(out)
display(figures["curves"])

# %% [markdown]
# ## PPO statistics

# %%
display(figures["ppo"])

# %% [markdown]
# ## Evaluation images
#
# Rows are seeds, columns prompts: a row of near-identical images is the collapse (different prompts, same image).

# %%
display(report.as_jpeg(figures["images"]))

# %% [markdown]
# ## Final numbers

# %%
report.cell_table(out)
