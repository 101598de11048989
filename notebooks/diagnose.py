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
# # Diagnose a fine-tuned model: collapse, or a loading or seeding bug?
#
# Compares a tuned model (a diffusers / TRL LoRA, a peft adapter as flow_grpo and DiffusionNFT save it, a ddpo-pytorch attention-processor checkpoint, a full UNet or SD3 transformer folder or one of our run folders) with its base model (SD-type, sampled with our DDIM sampler, or SD3-type, sampled with the stock pipeline's ODE) on the same prompts and seeds; for a run folder, also re-samples its saved eval images to check that the loaded model is the evaluated one. All the work is in `ddpo_study.diagnose`; `python -m ddpo_study diagnose` runs this notebook and writes it as one HTML page.

# %% tags=["parameters"]
# Papermill parameters (python -m ddpo_study diagnose sets them); empty strings and None mean "the default".
base_model = ""  # toy, toy-flow, sd15, sd35, a diffusers pipeline folder or a hub id; default: a run folder's model, else toy
tuned = "results/toy_study/toy_30-lora-lam0.0-s0"  # a LoRA file or folder, peft adapter, ddpo-pytorch checkpoint, UNet or SD3 transformer folder, or run folder
prompts = ""  # prompt set name or file; default: a run's eval prompts, toy_eval for the toy model, else sd_animals_30
reward = ""  # reward name (ddpo_study.rewards); default: a run's reward, else aesthetic
num_prompts = 16  # the first N prompts of the set
num_seeds = 4  # images per prompt
num_steps = None  # DDIM steps (SD3: ODE steps); default: a run's eval steps, else 20
guidance_scale = None  # classifier-free guidance scale; default: a run's, else 5.0
eta = None  # DDIM eta (unused by an SD3 base); default: a run's, else 1.0
lora_scales = [0.0, 0.25, 0.5, 0.75, 1.0]  # scales of the tuned update in the sweep (0 is the base model)
switch_steps = None  # base-model steps k of the combined generation; default: 0, T/4, T/2, 3T/4 and T
device = "auto"  # auto, cpu or cuda
clip_model = ""  # CLIP for metrics and rewards; default: the toy model's clip/, else openai/clip-vit-large-patch14
aesthetic_model = ""  # aesthetic predictor; default: the toy model's aesthetic/ (a LAION file for SD)
out_dir = ""  # folder for diagnose.json (the verdict and tables); empty: not written

# %%
# %matplotlib inline
import os

from ddpo_study import report
from ddpo_study.models import REPO_ROOT

os.chdir(REPO_ROOT)  # paths are relative to the repository root, in JupyterLab as under papermill
report.notebook_setup()  # no loading bars or deprecation chatter in the report

from IPython.display import Markdown, display

from ddpo_study import diagnose

dx = diagnose.prepare(base_model or None, tuned, prompts=prompts, reward=reward, num_prompts=num_prompts,
                      num_seeds=num_seeds, num_steps=num_steps, guidance_scale=guidance_scale, eta=eta, device=device,
                      clip_model=clip_model, aesthetic_model=aesthetic_model)
results = diagnose.run_all(dx, lora_scales, switch_steps)
if out_dir:
    diagnose.save_results(results, out_dir)
display(Markdown(diagnose.describe(dx)))

# %% [markdown]
# ## Verdict

# %%
display(Markdown(f"**{results.verdict}**"))
diagnose.thresholds_table()

# %% [markdown]
# ## The symptom: do different prompts give the same image?
#
# Cross-prompt diversity (mean CLIP cosine distance between images of different prompts) and prompt retrieval (how often CLIP picks an image's own prompt among these prompts), once with **the same seeds for every prompt** (the images of different prompts share their initial noise, as in the inference script of huggingface/trl#2113) and once with **a different seed per prompt**. `cross_div_vs_base` is the tuned model's diversity as a fraction of the base's.

# %%
display(results.symptom)
for seeds in diagnose.SEED_MODES:  # also saved beside the report, as images_<seeds>.png
    display(diagnose.fig_images(dx, seeds, save_to=out_dir))

# %% [markdown]
# ## Is the LoRA even loaded?
#
# A LoRA whose keys match no layer, or weights that never left the base, give the base model's images. LoRA scale 0 must reproduce the base exactly: otherwise the weights under the adapter are not this base model.

# %%
results.checks

# %% [markdown]
# ## Is the loaded model the evaluated one?
#
# For one of our run folders: its saved eval images, re-sampled at their prompts and seeds, must come back (mean difference well below one 8-bit level): the base model as epoch 0, the tuned model as the epoch of its weights. Large differences point at loading, not training. Other tuned models have no saved evals to compare with.

# %%
results.reproduction

# %% [markdown]
# ## Reward against diversity: from the base model to the tuned one
#
# Two ways back: the tuned update scaled by s (a LoRA through `set_adapters`; a full UNet or SD3 transformer by interpolating its weights, `base + s (tuned - base)`), and the base model for the first k of the denoising steps (for SD3, of the ODE's steps), then the tuned one (the layout is set early). Each point is all prompts x seeds at the same seeds. Then the scale sweep's images at one seed: a collapse that appears gradually with the scale is a property of the learned update.

# %%
if results.scale.empty and results.switch.empty:
    display(Markdown("Skipped: the tuned model's outputs are the base model's, so every point would be the base."))
else:
    display(diagnose.fig_tradeoff(results.scale, results.switch))
    display(results.scale)
    display(results.switch)
    display(diagnose.fig_scale_images(dx, lora_scales))
