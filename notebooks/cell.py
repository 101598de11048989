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
# The run's configuration (ddpo_study/config.py): a grid passes its cell's as `config`; papermill -p works for either.
config = {}  # DDPOConfig fields as a dict; a field left out keeps its default
config_path = ""  # or a YAML/JSON config file, as `python -m ddpo_study train` reads it; `config` overrides its keys

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

from IPython.display import display

from ddpo_study import train
from ddpo_study.config import DDPOConfig, load_config

cfg = load_config(config_path, config) if config_path else DDPOConfig.from_dict(config)
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
