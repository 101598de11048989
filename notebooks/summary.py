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
# # Study summary
#
# Every figure and table from the saved results of a grid (nothing is trained here); `ddpo_study.report.write_summary` also writes them to `<root>/summary/` as PNG/PDF and CSV/Markdown.

# %% tags=["parameters"]
root = "results/toy_study"  # a grid's output_root (relative to the repository root)
allow_damaged = False  # True: finished cells with damaged files are listed in cells.md instead of stopping the summary

# %%
# %matplotlib inline
import os

from ddpo_study import report
from ddpo_study.models import REPO_ROOT

os.chdir(REPO_ROOT)  # paths are relative to the repository root, in JupyterLab as under papermill
report.notebook_setup()  # no loading bars or deprecation chatter in the report

from IPython.display import Markdown, display

summary = report.write_summary(root, allow_damaged=allow_damaged)
display(Markdown(f"{len(summary.files)} files written to `{summary.out_dir}`"))

# %% [markdown]
# ## What the runs did
#
# In words, from the data: each condition's eval reward from epoch 0 to its last eval, and what happened to its
# prompts (the judge first, then CLIP's cross-prompt distance and retrieval). The curves and the pre-registered
# questions follow.

# %%
display(Markdown(report.plain_summary(report.load_grid_results(root, allow_damaged=allow_damaged))))

# %% [markdown]
# ## Reward vs epoch

# %%
if "reward_curves" in summary.figures:
    display(summary.figures["reward_curves"])

# %% [markdown]
# ## Diversity and prompt retrieval vs epoch

# %%
if "diversity_curves" in summary.figures:
    display(summary.figures["diversity_curves"])

# %% [markdown]
# ## The questions
#
# As pre-registered in the grid spec (`questions:`; a spec without them gets default exploratory ones): for each
# question, metric and matched-reward level, the difference a - b paired by seed with its 95% t CI, Holm-adjusted
# p for the primary questions, and the verdict ("answered: ..." or "not answered: <reason>").

# %%
summary.tables.get("questions")

# %% [markdown]
# ## Across methods (grids of several algorithms or base models)
#
# Each condition from its base model through the same reward *gained* (fractions of the smallest gain among the
# primary conditions that moved) to its final epoch, with seed CIs; and, where the spec pools another grid's runs
# of the same recipe into a question (`pool_with`), that secondary reading (exploratory).

# %%
if "methods" in summary.figures:
    display(summary.figures["methods"])
    display(summary.tables["methods"])
if "pooled" in summary.tables:
    display(summary.tables["pooled"])

# %% [markdown]
# ## Reward-diversity frontier
#
# Conditions compared at matched reward, not only matched epoch.

# %%
if "frontier" in summary.figures:
    display(summary.figures["frontier"])
summary.tables.get("matched_reward")

# %% [markdown]
# ## Every condition on one frontier
#
# Each condition's final point: eval-reward gain over the base model against diversity (mean and 95% CI over
# seeds). A condition that keeps diversity by not learning sits near gain 0, so the table also gives each one's
# difference from the reference condition at matched reward (half the smaller gain, paired by seed); the
# judge's all-correct rate comes first because it shares nothing with the CLIP that rewards and penalties use.

# %%
if "frontier_points" in summary.figures:
    display(summary.figures["frontier_points"])
summary.tables.get("frontier_points")

# %% [markdown]
# ## Final epoch

# %%
if "final_bars" in summary.figures:
    display(summary.figures["final_bars"])
summary.tables.get("final")

# %% [markdown]
# ## Images: base model and each condition's final epoch (one seed, all eval prompts)

# %%
if "montage" in summary.figures:
    display(summary.figures["montage"])

# %% [markdown]
# ## Learning: each run's eval-reward gain over the base model (z with standard errors clustered by prompt)

# %%
display(summary.tables.get("learning"))

# %% [markdown]
# ## All cells

# %%
summary.tables.get("cells")
