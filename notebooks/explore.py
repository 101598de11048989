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
# # Explore one cell: collapse or loading bug?
#
# Loads the base model and the run's tuned weights with the stock loaders (LoRA: `pipe.load_lora_weights`; a finished run keeps them in `final/`, a running one in `checkpoints/latest/`; a run without them is an error, never the base model in disguise), re-samples the saved eval images to check that the loaded model is the evaluated one, compares base and tuned images at the same seeds, and sweeps the LoRA scale from 0 to 1.

# %% tags=["parameters"]
cell_dir = "results/toy_study/toy_30-lora-lam0.0-s0"  # a run folder (relative to the repository root)
prompts = []  # prompts to sample; [] means the first max_prompts eval prompts of the cell
seeds = [0, 1]  # sampling seeds (the same for base and tuned)
lora_scales = [0.0, 0.25, 0.5, 0.75, 1.0]  # LoRA scales of the sweep (0 is without the LoRA)
device = "auto"  # auto, cpu or cuda
max_prompts = 8  # columns of the image grids

# %%
# %matplotlib inline
import os

from ddpo_study import report
from ddpo_study.models import REPO_ROOT

os.chdir(REPO_ROOT)  # paths are relative to the repository root, in JupyterLab as under papermill
report.notebook_setup()  # no loading bars or deprecation chatter in the report

from IPython.display import display

from ddpo_study import explore

cell = explore.load_cell(cell_dir, device=device)
prompts = list(prompts) or explore.default_prompts(cell, max_prompts)
print(f"{cell.mode} run: weights of epoch {cell.checkpoint_epoch} ({cell.weights.lora or cell.weights.unet}), "
      f"LoRA adapter: {cell.adapter}")

# %% [markdown]
# ## Is the loaded model the evaluated one?
#
# Re-sampling the saved eval prompts and seeds must reproduce the saved images (mean difference well below one 8-bit level).

# %%
explore.reproduction_check(cell, max_prompts)

# %% [markdown]
# ## Base vs tuned at the same seeds

# %%
base = explore.sample_images(cell, prompts, seeds, "base")
tuned = explore.sample_images(cell, prompts, seeds, "tuned")
display(explore.fig_base_vs_tuned(base, tuned, prompts, seeds))

# %% [markdown]
# ## LoRA scale sweep
#
# From 0 (base; for progressive runs: the full-tuned UNet) to 1 (as trained).

# %%
if cell.adapter is not None:
    sweep = explore.lora_scale_sweep(cell, prompts, seeds[0], lora_scales)
    display(explore.fig_scale_sweep(sweep, lora_scales, prompts, seeds[0]))
else:
    print("a full fine-tuning run: no LoRA to scale")
