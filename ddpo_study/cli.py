"""Command line: ``python -m ddpo_study <command>`` (also installed as ``ddpo-study``).

Commands:
  train CONFIG [--set key=value ...]   one DDPO run from a YAML/JSON config (resumes if interrupted)
  demo [--out DIR]                     sample the toy model on eval prompts x seeds and write an image grid
  base-eval [--out FILE]               prompt-following (geometric judge) and diversity of the base toy model
  study [--quick] [--jobs N]           the study's main job (what `make study` runs): configs/toy_study.yaml
  grid run|status SPEC, summary, cell  the grid runner (see ddpo_study/grid/__init__.py)
  grid run SPEC [--quick] [--jobs N] [--shard i/n] [--match PATTERNS] [--no-summary]
                                       run a grid of cells through the cell notebook (skips done cells)
  grid status SPEC [--quick]           one line per cell: state, epochs done / total, last reward, error
  grid stop SPEC [--quick]             a running `grid run` finishes its running cells and starts no more
  grid configs SPEC DIR [--quick] [--shard i/n] [--match PATTERNS]
                                       write each unfinished cell's config to DIR/<cell>.json, to train them
                                       elsewhere (`train DIR/<cell>.json`); `grid run` then only renders reports
  summary ROOT_OR_SPEC [--quick] [--no-notebook] [--allow-damaged]
                                       figures and tables of a grid's results under <root>/summary/ (a finished
                                       cell with damaged files stops it, or is listed in cells.md)
  cell SPEC CELL_NAME [--quick] [--write-config PATH]
                                       run one cell of a grid (or write its config for accelerate launch)
  diagnose TUNED [--base MODEL] [--prompts SET] [--out DIR] ...
                                       any fine-tuned model (LoRA file/folder, ddpo-pytorch checkpoint, UNet
                                       folder, run folder) against its base: collapse or loading bug? (HTML)
  remedies SPEC [--no-sample]          inference-time remedies (LoRA scale, base for the first k steps) on a
                                       grid's finished runs vs the same runs stopped earlier at equal reward
  monitor --watch DIR [--base MODEL] [--once] ...
                                       another trainer's checkpoints as they appear: when do the prompts go?
  figures [--list]                     every figure README.md and docs/*.md embed, rebuilt from committed data
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from . import watch


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input (a bad spec or config): one line, no traceback."""
    from .config import ConfigError
    from .diagnose import DiagnoseError, TunedModelError
    from .diagnose.remedy_sweep import RemedySpecError
    from .grid import GridError
    from .models import ModelLoadError
    from .prompts import PromptSetError
    from .report.figures_index import FiguresError
    from .rewards import RewardError
    from .rundir import DamagedRunError, MissingWeightsError

    return (GridError, ConfigError, PromptSetError, ModelLoadError, RewardError, TunedModelError, DiagnoseError,
            MissingWeightsError, RemedySpecError, DamagedRunError, FiguresError)


def cmd_train(args) -> int:
    from .config import load_config
    from .train import run

    cfg = load_config(args.config, parse_sets(args.set))
    out = run(cfg)
    print(f"done: {out}")
    return 0


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")


def cmd_demo(args) -> int:
    from .images import FLOAT_NOISE_LEVELS, image_grid, pixel_difference, to_uint8
    from .models import load_pipeline
    from .prompts import load_prompts
    from .sampler import sample_trajectories

    pipe = load_pipeline(args.model)
    prompts = load_prompts("toy_eval")[: args.prompts]
    seeds = list(range(args.seeds))
    pairs = [(p, s) for s in seeds for p in prompts]  # row = seed, column = prompt
    traj = sample_trajectories(pipe, [p for p, _ in pairs], [s for _, s in pairs], num_inference_steps=20,
                               guidance_scale=args.guidance, eta=1.0, progress=True)
    grid = image_grid(to_uint8(traj.images), rows=len(seeds), cols=len(prompts), upscale=3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path, prompts_file, text = out / "demo_grid.png", out / "demo_prompts.txt", "\n".join(prompts) + "\n"
    same_prompts = prompts_file.is_file() and prompts_file.read_text() == text
    diff = pixel_difference(path, grid) if same_prompts else None
    if diff is not None and diff <= FLOAT_NOISE_LEVELS:
        # Rewriting the file for float noise would show a committed grid as changed after every `make study` on a
        # new machine.
        print(f"kept {path}: the new samples match it to within {diff} of 255 levels (float noise)")
        return 0
    grid.save(path)
    prompts_file.write_text(text)
    print(f"wrote {path} (rows: seeds {seeds}; columns: the prompts in demo_prompts.txt)")
    return 0


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--out", default="results/demo")


def cmd_base_eval(args) -> int:
    from .toy import evaluate

    argv = ["--model", args.model, "--guidance", *map(str, args.guidance), "--steps", str(args.steps)]
    if args.out:
        argv += ["--out", args.out]
    evaluate.main(argv)
    return 0


def base_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0])
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (the study samples with its num_steps)")
    p.add_argument("--out", default=None)


REMEDIES_SPEC = "configs/inference_remedies.yaml"  # the inference-time remedies on the study's LoRA runs


def cmd_study(args) -> int:
    """The study's main job: a demo grid of the base toy model, the default toy grid and its summary, then the
    inference-time remedies on its finished LoRA runs."""
    from .grid import run_grid
    from .report import run_summary

    spec = "configs/toy_study.yaml"
    demo_out = Path("results/toy_study_quick" if args.quick else "results/toy_study")
    demo_out.mkdir(parents=True, exist_ok=True)
    cmd_demo(argparse.Namespace(model="toy", prompts=8, seeds=4, guidance=5.0, out=str(demo_out)))
    result = run_grid(spec, quick=args.quick, jobs=args.jobs, shard=None, summarize=run_summary)
    if not args.quick and result.ok:
        cmd_remedies(argparse.Namespace(spec=REMEDIES_SPEC, no_sample=False, device="auto"))
    return 0 if result.ok else 1


def study_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the spec's quick variant (fewer epochs and seeds)")
    p.add_argument("--jobs", type=int, default=2, help="cells run at once")


def cmd_grid_run(args) -> int:
    from .grid import run_grid
    from .report import run_summary

    result = run_grid(args.spec, quick=args.quick, jobs=args.jobs, shard=args.shard, match=args.match,
                      summarize=None if args.no_summary else run_summary)
    return 0 if result.ok else 1


def grid_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="grid spec YAML (see ddpo_study/grid/__init__.py)")
    p.add_argument("--quick", action="store_true", help="apply the spec's quick overrides")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (each gets cpu_count // jobs threads)")
    _selection_arguments(p, "(e.g. 'lora-base-*')")
    p.add_argument("--no-summary", action="store_true", help="do not write the summary afterwards")


def _selection_arguments(p: argparse.ArgumentParser, example: str = "") -> None:
    p.add_argument("--shard", default=None, metavar="i/n", help="only the cells whose index %% n == i")
    p.add_argument("--match", default=None, metavar="PATTERNS",
                   help=("only the cells whose name matches one of these comma-separated patterns " + example).strip()
                   if example else "only the cells whose name matches a pattern")


def cmd_grid_status(args) -> int:
    import pandas as pd

    from .grid import status

    table = status(args.spec, quick=args.quick)
    shown = table.copy()
    for col in ("last_eval_reward", "last_train_reward", "seconds"):
        shown[col] = [f"{v:.4g}" if isinstance(v, (int, float)) and v == v else "" for v in table[col]]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.max_colwidth", 70):
        print(shown.to_string(index=False))
    counts = table["state"].value_counts()
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    from .grid import load_spec
    from .rundir import SHARED_EVAL_DIR, unlinked_shared_evals

    unlinked = unlinked_shared_evals(load_spec(args.spec, quick=args.quick).output_root / SHARED_EVAL_DIR)
    if unlinked:
        print(f"{len(unlinked)} shared eval file(s) that no cell links to (left by re-trained cells; safe to delete): "
              + ", ".join(str(p) for p in unlinked))
    return 0


def spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("--quick", action="store_true")


def cmd_grid_stop(args) -> int:
    from .grid import request_stop

    path = request_stop(args.spec, quick=args.quick)
    print(f"wrote {path}: the running grid finishes the cells it has started and starts no more")
    return 0


def _write_cell_config(cell, path) -> None:
    """A grid cell's exact training config (its DDPOConfig values, validated) as a file for ``train``."""
    from .config import DDPOConfig, save_config

    save_config(DDPOConfig.from_dict(cell.params), path)


def cmd_grid_configs(args) -> int:
    """Cells as plain config files: for a GPU box without Jupyter, a cluster array job or ``accelerate launch``.

    A cell trained this way is finished (``DONE``), so ``grid run`` afterwards only renders its report.
    """
    from .grid import expand, is_trained, load_spec, select_match, select_shard

    spec = load_spec(args.spec, quick=args.quick)
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = [c for c in select_match(select_shard(expand(spec), args.shard), args.match) if not is_trained(c)]
    for cell in cells:
        _write_cell_config(cell, out / f"{cell.name}.json")
    print(f"wrote {len(cells)} config(s) to {out} (cells already trained are left out)")
    return 0


def grid_configs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("dir", help="folder for <cell>.json files")
    p.add_argument("--quick", action="store_true")
    _selection_arguments(p)


def cmd_summary(args) -> int:
    from .grid import load_spec
    from .report import run_summary

    target = Path(args.target)
    root = load_spec(target, quick=args.quick).output_root if target.is_file() else target
    out = run_summary(root, notebook=not args.no_notebook, allow_damaged=args.allow_damaged)
    return 0 if out is not None else 1


def summary_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="ROOT_OR_SPEC", help="a results folder or a grid spec (its output_root)")
    p.add_argument("--quick", action="store_true", help="with a spec: its quick output_root")
    p.add_argument("--no-notebook", action="store_true", help="write the files only, without summary.ipynb/.html")
    p.add_argument("--allow-damaged", action="store_true",
                   help="list finished cells whose files are damaged in cells.md instead of stopping on the first")


def cmd_cell(args) -> int:
    from .grid import find_cell, run_grid

    spec, cell = find_cell(args.spec, args.cell_name, quick=args.quick)
    if args.write_config:
        # For launchers the notebook cannot host (accelerate launch, a cluster job): train from this file, then
        # run this command again without --write-config to render the report (training resumes as a no-op).
        _write_cell_config(cell, args.write_config)
        print(f"wrote {args.write_config} (output_dir {cell.params['output_dir']})")
        return 0
    result = run_grid(spec, only=[cell.name])
    return 0 if result.ok else 1


def cell_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec")
    p.add_argument("cell_name")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--write-config", metavar="PATH", default="",
                   help="only write the cell's training config (JSON) for `accelerate launch -m ddpo_study train PATH`")


def _diagnose_name(path: Path) -> str:
    """A folder name for a tuned model's report: its run or checkpoint folder, not ``lora``/``unet``/``final``."""
    p = path.parent if path.is_file() else path
    while p.name in ("lora", "unet", "transformer", "final", "latest", "checkpoints") and p.parent != p:
        p = p.parent
    return p.name or "tuned"


def cmd_diagnose(args) -> int:
    """A tuned model against its base, written as one HTML page; prints the verdict line."""
    import json

    from .diagnose import REPORT_JSON, inspect_tuned, write_report

    _kind, path = inspect_tuned(args.tuned)
    out = Path(args.out) if args.out else Path("runs") / "diagnose" / _diagnose_name(path)
    html = write_report(out, args.base, args.tuned, prompts=args.prompts, reward=args.reward,
                        num_prompts=args.num_prompts, num_seeds=args.num_seeds, num_steps=args.steps,
                        guidance_scale=args.guidance, eta=args.eta, lora_scales=args.scales,
                        switch_steps=args.switch_steps, device=args.device, clip_model=args.clip_model,
                        aesthetic_model=args.aesthetic_model)
    print(f"verdict: {json.loads((out / REPORT_JSON).read_text())['verdict']}")
    print(f"report: {html}")
    return 0


DIAGNOSE_DESCRIPTION = (
    "Compare a tuned model with its base on the same prompts and seeds: the cross-prompt collapse with shared and "
    "per-prompt seeds, whether the weights are in effect, a LoRA-scale sweep and a base-for-the-first-k-steps sweep, "
    "and a verdict. Writes <out>/diagnose.html (one page, no code) and diagnose.json.")


def diagnose_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("tuned", help="a diffusers/TRL LoRA folder or file (SD or SD3), a peft adapter (flow_grpo's or "
                   "DiffusionNFT's checkpoint-N/lora), a ddpo-pytorch checkpoint (attention-processor LoRA), a "
                   "diffusers UNet or SD3 transformer folder (or a folder with unet/ or transformer/), or a run folder")
    p.add_argument("--base", default=None, help="base model: toy, toy-flow, sd15, sd35, a pipeline folder (SD or "
                   "SD3) or hub id (default: a run folder's model, else toy)")
    p.add_argument("--prompts", default="", help="prompt set name or file (default: a run's eval prompts, toy_eval "
                   "for the toy model, else sd_animals_30)")
    p.add_argument("--num-prompts", type=int, default=16, help="the first N prompts of the set")
    p.add_argument("--num-seeds", type=int, default=4, help="images per prompt")
    p.add_argument("--reward", default="", help="reward name (default: a run's reward, else aesthetic)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps, or an SD3 base's ODE steps (default: a "
                   "run's eval steps, else 20)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: a run's, else 5)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: a run's, else 1; an SD3 base's ODE "
                   "has none)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="scales of the tuned update (LoRA scale, or weight interpolation for a full UNet)")
    p.add_argument("--switch-steps", type=int, nargs="+", default=None,
                   help="base-model steps k before switching to the tuned model (default: 0, T/4, T/2, 3T/4, T)")
    p.add_argument("--device", default="auto")
    p.add_argument("--clip-model", default="", help="CLIP folder or hub id (default: the toy model's, else "
                   "openai/clip-vit-large-patch14)")
    p.add_argument("--aesthetic-model", default="", help="aesthetic predictor (the toy model's, or a LAION file)")
    p.add_argument("--out", default="", help="report folder (default: runs/diagnose/<tuned model's name>)")


def cmd_remedies(args) -> int:
    """Sweep the spec's runs (resumable), then write the comparison with early stopping next to points.csv."""
    from .diagnose.remedy_sweep import load_remedy_spec, run_remedies
    from .grid import load_spec
    from .report.remedies import POINTS_FILE, write_remedies_summary

    spec = load_remedy_spec(args.spec)
    if not args.no_sample:
        run_remedies(spec, device=args.device)
    elif not (Path(spec.output) / POINTS_FILE).is_file():
        print(f"error: --no-sample but {Path(spec.output) / POINTS_FILE} does not exist", file=sys.stderr)
        return 2
    files = write_remedies_summary(spec.output, load_spec(spec.grid).output_root, spec.metrics, spec.primary,
                                   keep=spec.points())
    print(f"wrote {len(files)} files to {spec.output}")
    return 0


REMEDIES_DESCRIPTION = (
    "For every finished run the spec selects: the LoRA scale sweep and the base-for-the-first-k-steps sweep at the "
    "run's own eval prompts and seeds (appended to <output>/points.csv, resumable), then each point against the same "
    "run's training trajectory at the same reward (remedies.md, matched_points.csv, checks.md, remedies.png).")


def remedies_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="a remedy spec, e.g. configs/inference_remedies.yaml")
    p.add_argument("--no-sample", action="store_true", help="only rewrite the tables and figure from points.csv")
    p.add_argument("--device", default="auto")


def cmd_figures(args) -> int:
    """Rebuild every embedded figure (or, with --list, say which producer makes each)."""
    from .report.figures_index import plan, rebuild

    if args.list:
        for (producer, key), paths in plan().items():
            print(f"{producer.name} ({key}): {', '.join(paths)}")
        return 0
    print(f"rebuilt {len(rebuild())} embedded figures")
    return 0


def figures_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--list", action="store_true", help="only list the embedded figures and what makes each")


# ------------------------------------------------------------------------------------------------ the commands
@dataclass(frozen=True)
class Command:
    """A subcommand: its name and help, what adds its arguments, and what runs it (None: it has subcommands)."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int] | None = None
    description: str | None = None


GRID_COMMANDS = (
    Command("run", "run every cell not yet done (then the summary)", grid_run_arguments, cmd_grid_run),
    Command("status", "one line per cell", spec_arguments, cmd_grid_status),
    Command("stop", "the running grid finishes its running cells and starts no more", spec_arguments, cmd_grid_stop),
    Command("configs", "write each unfinished cell's config file (train them elsewhere)", grid_configs_arguments,
            cmd_grid_configs),
)


def grid_arguments(p: argparse.ArgumentParser) -> None:
    add_commands(p.add_subparsers(dest="grid_command", required=True), GRID_COMMANDS)


COMMANDS = (
    Command("train", "one DDPO run from a config file", train_arguments, cmd_train),
    Command("demo", "sample the toy model and write an image grid", demo_arguments, cmd_demo),
    Command("base-eval", "judge the base toy model's prompt-following and diversity", base_eval_arguments,
            cmd_base_eval),
    Command("study", "the study's main job", study_arguments, cmd_study),
    Command("grid", "run a grid of cells, or show its status", grid_arguments),
    Command("summary", "figures and tables from a grid's saved results", summary_arguments, cmd_summary),
    Command("cell", "run one cell of a grid", cell_arguments, cmd_cell),
    Command("diagnose", "a fine-tuned model against its base: collapse or loading bug? (HTML report)",
            diagnose_arguments, cmd_diagnose, DIAGNOSE_DESCRIPTION),
    Command("remedies", "inference-time remedies on a grid's runs vs early stopping at equal reward",
            remedies_arguments, cmd_remedies, REMEDIES_DESCRIPTION),
    Command("monitor", watch.HELP, watch.monitor_arguments, watch.cmd_monitor, watch.DESCRIPTION),
    Command("figures", "rebuild every figure README.md and docs/*.md embed, from committed data", figures_arguments,
            cmd_figures),
)


def add_commands(sub, commands: tuple[Command, ...]) -> None:
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.arguments(p)
        if command.run is not None:
            p.set_defaults(fn=command.run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ddpo-study", description=__doc__.split("\n\n")[0])
    add_commands(ap.add_subparsers(dest="command", required=True), COMMANDS)
    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
