"""Generate the study's notebooks (cell, summary, explore) with nbformat, reproducibly.

    python notebooks/make_notebooks.py          # (re)write notebooks/*.ipynb
    python notebooks/make_notebooks.py --check  # exit 1 if a committed notebook differs from the generated one

The cell notebook's ``parameters`` cell lists every :class:`~ddpo_study.config.DDPOConfig` field with its
default and its docstring (``dataclasses.fields`` + ``field_docs()``), so papermill's inspection knows every
key a grid spec may set. The notebooks stay thin: all logic lives in ``ddpo_study`` (train, report, explore).
Cell ids are fixed and no outputs are stored, so regenerating gives identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from ddpo_study.config import DDPOConfig, field_docs  # noqa: E402

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LANGUAGE_INFO = {"name": "python"}
SETUP = """%matplotlib inline
from ddpo_study import report

report.notebook_setup()  # no loading bars or deprecation chatter in the report"""


def _notebook(cells: list[tuple[str, str, list[str]]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)}
    for i, (kind, source, tags) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.id = f"cell-{i:02d}"
        if tags:
            cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    return nb


def parameters_source() -> str:
    """One line per DDPOConfig field: ``name = default  # docstring``."""
    # papermill skips a line with two '=': say "means" in the comment instead
    docs = {k: v.replace(" = ", " means ").replace("=", ":") for k, v in field_docs().items()}
    lines = ["# Every DDPOConfig field (ddpo_study/config.py); a grid spec or papermill -p overrides any of them."]
    for f in dataclasses.fields(DDPOConfig):
        lines.append(f"{f.name} = {f.default!r}  # {docs.get(f.name, '')}".rstrip())
    return "\n".join(lines)


def cell_notebook() -> nbformat.NotebookNode:
    names = [f.name for f in dataclasses.fields(DDPOConfig)]
    config_lines = ",\n".join(f"    {n}={n}" for n in names)
    return _notebook([
        ("md", "# One DDPO run (a grid cell)\n\nTrains one configuration with `ddpo_study.train.run` and reports "
               "what it did: reward, diversity, PPO statistics and the evaluation images. Written by "
               "`notebooks/make_notebooks.py`; run by `python -m ddpo_study grid run SPEC` through papermill.", []),
        ("code", parameters_source(), ["parameters"]),
        ("md", "## Configuration\n\nThe keys that differ from the defaults (the cell's place in the grid).", []),
        ("code", SETUP + "\n\nfrom IPython.display import display\n\nfrom ddpo_study import train\n"
                 "from ddpo_study.config import DDPOConfig\n\n"
                 f"cfg = DDPOConfig.from_dict(dict(\n{config_lines},\n))\n"
                 "report.config_diff(cfg)", []),
        ("md", "## Training\n\nResumes from `checkpoints/latest` when the run was interrupted.", []),
        ("code", "out = train.run(cfg)", []),
        ("md", "## Reward and diversity\n\nEval reward and the reward of each epoch's training batch; "
               "within-prompt (same prompt, different seeds) and cross-prompt (same seed, different prompts) "
               "diversity; how often CLIP retrieves an image's own prompt among the eval prompts.", []),
        ("code", "figures = report.cell_figures(out)\ndisplay(figures[\"curves\"])", []),
        ("md", "## PPO statistics", []),
        ("code", "display(figures[\"ppo\"])", []),
        ("md", "## Evaluation images\n\nRows are seeds, columns prompts: a row of near-identical images is the "
               "collapse (different prompts, same image).", []),
        ("code", "display(report.as_jpeg(figures[\"images\"]))", []),
        ("md", "## Final numbers", []),
        ("code", "report.cell_table(out)", []),
    ])


def summary_notebook() -> nbformat.NotebookNode:
    show = lambda name: f"if \"{name}\" in summary.figures:\n    display(summary.figures[\"{name}\"])"  # noqa: E731
    return _notebook([
        ("md", "# Study summary\n\nEvery figure and table from the saved results of a grid (nothing is trained "
               "here); `ddpo_study.report.write_summary` also writes them to `<root>/summary/` as PNG/PDF and "
               "CSV/Markdown.", []),
        ("code", 'root = "results/toy_study"  # a grid\'s output_root (relative to the repository root)',
         ["parameters"]),
        ("code", SETUP + "\n\nfrom IPython.display import Markdown, display\n\n"
                 "summary = report.write_summary(root)\n"
                 "display(Markdown(f\"{len(summary.files)} files written to `{summary.out_dir}`\"))", []),
        ("md", "## The four questions\n\nDifferences a - b with Welch 95% CIs over seeds, in the reference "
               "setting (LoRA, fewest prompts, no penalty); `contrasts` below has every setting.", []),
        ("code", "summary.tables.get(\"questions\")", []),
        ("md", "## Reward vs epoch", []),
        ("code", show("reward_curves"), []),
        ("md", "## Diversity and prompt retrieval vs epoch", []),
        ("code", show("diversity_curves"), []),
        ("md", "## Reward-diversity frontier\n\nConditions compared at matched reward, not only matched epoch.",
         []),
        ("code", show("frontier") + "\nsummary.tables.get(\"matched_reward\")", []),
        ("md", "## Final epoch", []),
        ("code", show("final_bars") + "\nsummary.tables.get(\"final\")", []),
        ("md", "## Images: base model and each condition's final epoch (one seed, all eval prompts)", []),
        ("code", show("montage"), []),
        ("md", "## All contrasts and cells", []),
        ("code", "display(summary.tables.get(\"contrasts\"))\nsummary.tables.get(\"cells\")", []),
    ])


def explore_notebook() -> nbformat.NotebookNode:
    return _notebook([
        ("md", "# Explore one cell: collapse or loading bug?\n\nLoads the base model and the cell's checkpoint with "
               "the stock loaders (LoRA: `pipe.load_lora_weights`), re-samples the saved eval images to check that "
               "the loaded model is the evaluated one, compares base and tuned images at the same seeds, and "
               "sweeps the LoRA scale from 0 to 1.", []),
        ("code", 'cell_dir = "results/toy_study_quick/toy_30-lora-lam0.0-s0"  # a run folder\n'
                 "prompts = []  # prompts to sample; [] means the first max_prompts eval prompts of the cell\n"
                 "seeds = [0, 1]  # sampling seeds (the same for base and tuned)\n"
                 "lora_scales = [0.0, 0.25, 0.5, 0.75, 1.0]  # LoRA scales of the sweep (0 is without the LoRA)\n"
                 'device = "auto"  # auto, cpu or cuda\n'
                 "max_prompts = 8  # columns of the image grids", ["parameters"]),
        ("code", SETUP + "\n\nfrom IPython.display import display\n\nfrom ddpo_study import explore\n\n"
                 "cell = explore.load_cell(cell_dir, device=device)\n"
                 "prompts = list(prompts) or explore.default_prompts(cell, max_prompts)\n"
                 "print(f\"{cell.mode} run, checkpoint epoch {cell.checkpoint_epoch}, LoRA adapter: {cell.adapter}\")",
         []),
        ("md", "## Is the loaded model the evaluated one?\n\nRe-sampling the saved eval prompts and seeds must "
               "reproduce the saved images (mean difference well below one 8-bit level).", []),
        ("code", "explore.reproduction_check(cell, max_prompts)", []),
        ("md", "## Base vs tuned at the same seeds", []),
        ("code", "base = explore.sample_images(cell, prompts, seeds, \"base\")\n"
                 "tuned = explore.sample_images(cell, prompts, seeds, \"tuned\")\n"
                 "display(explore.fig_base_vs_tuned(base, tuned, prompts, seeds))", []),
        ("md", "## LoRA scale sweep\n\nFrom 0 (base; for progressive runs: the full-tuned UNet) to 1 (as trained).",
         []),
        ("code", "if cell.adapter is not None:\n"
                 "    sweep = explore.lora_scale_sweep(cell, prompts, seeds[0], lora_scales)\n"
                 "    display(explore.fig_scale_sweep(sweep, lora_scales, prompts, seeds[0]))\n"
                 "else:\n"
                 "    print(\"a full fine-tuning run: no LoRA to scale\")", []),
    ])


NOTEBOOKS = {"cell.ipynb": cell_notebook, "summary.ipynb": summary_notebook, "explore.ipynb": explore_notebook}


def render(name: str) -> str:
    return nbformat.writes(NOTEBOOKS[name](), version=4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = Path(args.out) / name
        text = render(name)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print(f"out of date (run python notebooks/make_notebooks.py): {stale}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
