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
  summary ROOT_OR_SPEC [--quick] [--no-notebook]
                                       figures and tables of a grid's results under <root>/summary/
  cell SPEC CELL_NAME [--quick] [--write-config PATH]
                                       run one cell of a grid (or write its config for accelerate launch)
  diagnose TUNED [--base MODEL] [--prompts SET] [--out DIR] ...
                                       any fine-tuned model (LoRA file/folder, ddpo-pytorch checkpoint, UNet
                                       folder, run folder) against its base: collapse or loading bug? (HTML)
  remedies SPEC [--no-sample]          inference-time remedies (LoRA scale, base for the first k steps) on a
                                       grid's finished runs vs the same runs stopped earlier at equal reward
  monitor --watch DIR [--base MODEL] [--once] ...
                                       another trainer's checkpoints as they appear: when do the prompts go?
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


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
    from .diagnose.remedies import RemedySpecError
    from .explore import MissingWeightsError
    from .grid import GridError
    from .models import ModelLoadError
    from .prompts import PromptSetError
    from .rewards import RewardError

    return (GridError, ConfigError, PromptSetError, ModelLoadError, RewardError, TunedModelError, DiagnoseError,
            MissingWeightsError, RemedySpecError)


def cmd_train(args) -> int:
    from .config import load_config
    from .train import run

    cfg = load_config(args.config, parse_sets(args.set))
    out = run(cfg)
    print(f"done: {out}")
    return 0


def cmd_demo(args) -> int:
    from diffusers.utils import make_image_grid
    from PIL import Image

    from .images import to_uint8
    from .models import load_pipeline
    from .prompts import load_prompts
    from .sampler import sample_trajectories

    pipe = load_pipeline(args.model)
    prompts = load_prompts("toy_eval")[: args.prompts]
    seeds = list(range(args.seeds))
    pairs = [(p, s) for s in seeds for p in prompts]  # row = seed, column = prompt
    traj = sample_trajectories(pipe, [p for p, _ in pairs], [s for _, s in pairs], num_inference_steps=20,
                               guidance_scale=args.guidance, eta=1.0, progress=True)
    grid = make_image_grid([Image.fromarray(a) for a in to_uint8(traj.images)], rows=len(seeds), cols=len(prompts))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST)
    path, text = out / "demo_grid.png", "\n".join(prompts) + "\n"
    diff = _pixel_difference(path, grid) if (out / "demo_prompts.txt").is_file() and \
        (out / "demo_prompts.txt").read_text() == text else None
    if diff is not None and diff <= DEMO_FLOAT_NOISE_LEVELS:
        # Another CPU or library build rounds a few pixels the other way; rewriting the file for that would show a
        # committed grid as changed after every `make study` on a new machine.
        print(f"kept {path}: the new samples match it to within {diff} of 255 levels (float noise)")
        return 0
    grid.save(path)
    (out / "demo_prompts.txt").write_text(text)
    print(f"wrote {path} (rows: seeds {seeds}; columns: the prompts in demo_prompts.txt)")
    return 0


#: A demo grid within this many 8-bit levels of the one on disk is the same samples (float noise across machines).
DEMO_FLOAT_NOISE_LEVELS = 1


def _pixel_difference(path: Path, image) -> int | None:
    """Largest per-pixel difference (8-bit levels) between ``image`` and the PNG at ``path``; None if there is no
    such file or it has another size."""
    import numpy as np
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as old:
        a, b = np.asarray(old.convert("RGB"), dtype=int), np.asarray(image.convert("RGB"), dtype=int)
    return int(np.abs(a - b).max()) if a.shape == b.shape else None


def cmd_base_eval(args) -> int:
    from .toy import evaluate

    argv = ["--model", args.model, "--guidance", *map(str, args.guidance), "--steps", str(args.steps)]
    if args.out:
        argv += ["--out", args.out]
    evaluate.main(argv)
    return 0


REMEDIES_SPEC = "configs/inference_remedies.yaml"  # the inference-time remedies on the study's LoRA runs


def cmd_study(args) -> int:
    """The study's main job: a demo grid of the base toy model, the default toy grid and its summary, then the
    inference-time remedies on its finished LoRA runs."""
    from .grid import run_grid

    spec = "configs/toy_study.yaml"
    demo_out = Path("results/toy_study_quick" if args.quick else "results/toy_study")
    demo_out.mkdir(parents=True, exist_ok=True)
    cmd_demo(argparse.Namespace(model="toy", prompts=8, seeds=4, guidance=5.0, out=str(demo_out)))
    result = run_grid(spec, quick=args.quick, jobs=args.jobs, shard=None, summary=True)
    if not args.quick and result.ok:
        cmd_remedies(argparse.Namespace(spec=REMEDIES_SPEC, no_sample=False, device="auto"))
    return 0 if result.ok else 1


def cmd_grid_run(args) -> int:
    from .grid import run_grid

    result = run_grid(args.spec, quick=args.quick, jobs=args.jobs, shard=args.shard, match=args.match,
                      summary=not args.no_summary)
    return 0 if result.ok else 1


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
    from .evaluation import unlinked_shared_evals
    from .grid import SHARED_EVAL_DIR, load_spec

    unlinked = unlinked_shared_evals(load_spec(args.spec, quick=args.quick).output_root / SHARED_EVAL_DIR)
    if unlinked:
        print(f"{len(unlinked)} shared eval file(s) that no cell links to (left by re-trained cells; safe to delete): "
              + ", ".join(str(p) for p in unlinked))
    return 0


def cmd_grid_stop(args) -> int:
    from .grid import request_stop

    path = request_stop(args.spec, quick=args.quick)
    print(f"wrote {path}: the running grid finishes the cells it has started and starts no more")
    return 0


def _write_cell_config(cell, path) -> None:
    """A grid cell's exact training config (its DDPOConfig fields, validated) as a file for ``train``."""
    from .config import DDPOConfig, save_config

    params = {k: v for k, v in cell.params.items() if k in DDPOConfig.__dataclass_fields__}
    save_config(DDPOConfig.from_dict(params), path)


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


def cmd_summary(args) -> int:
    from .grid import load_spec, run_summary

    target = Path(args.target)
    root = load_spec(target, quick=args.quick).output_root if target.is_file() else target
    out = run_summary(root, notebook=not args.no_notebook)
    return 0 if out is not None else 1


def cmd_cell(args) -> int:
    from .grid import find_cell, run_grid

    spec, cell = find_cell(args.spec, args.cell_name, quick=args.quick)
    if args.write_config:
        # For launchers the notebook cannot host (accelerate launch, a cluster job): train from this file, then
        # run this command again without --write-config to render the report (training resumes as a no-op).
        _write_cell_config(cell, args.write_config)
        print(f"wrote {args.write_config} (output_dir {cell.params['output_dir']})")
        return 0
    result = run_grid(spec, only=[cell.name], summary=False)
    return 0 if result.ok else 1


def _diagnose_name(path: Path) -> str:
    """A folder name for a tuned model's report: its run or checkpoint folder, not ``lora``/``unet``/``final``."""
    p = path.parent if path.is_file() else path
    while p.name in ("lora", "unet", "final", "latest", "checkpoints") and p.parent != p:
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


def cmd_remedies(args) -> int:
    """Sweep the spec's runs (resumable), then write the comparison with early stopping next to points.csv."""
    from .diagnose.remedies import POINTS_FILE, load_remedy_spec, run_remedies
    from .grid import load_spec
    from .report.remedies import write_remedies_summary

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ddpo-study", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="one DDPO run from a config file")
    p.add_argument("config")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("demo", help="sample the toy model and write an image grid")
    p.add_argument("--model", default="toy")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--out", default="results/demo")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("base-eval", help="judge the base toy model's prompt-following and diversity")
    p.add_argument("--model", default="toy")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0, 5.0])
    p.add_argument("--steps", type=int, default=20, help="DDIM steps (the study samples with its num_steps)")
    p.add_argument("--out", default=None)
    p.set_defaults(fn=cmd_base_eval)

    p = sub.add_parser("study", help="the study's main job")
    p.add_argument("--quick", action="store_true", help="the spec's quick variant (fewer epochs and seeds)")
    p.add_argument("--jobs", type=int, default=2, help="cells run at once")
    p.set_defaults(fn=cmd_study)

    p = sub.add_parser("grid", help="run a grid of cells, or show its status")
    gsub = p.add_subparsers(dest="grid_command", required=True)
    g = gsub.add_parser("run", help="run every cell not yet done (then the summary)")
    g.add_argument("spec", help="grid spec YAML (see ddpo_study/grid/__init__.py)")
    g.add_argument("--quick", action="store_true", help="apply the spec's quick overrides")
    g.add_argument("--jobs", type=int, default=1, help="cells run at once (each gets cpu_count // jobs threads)")
    g.add_argument("--shard", default=None, metavar="i/n", help="only the cells whose index %% n == i")
    g.add_argument("--match", default=None, metavar="PATTERNS",
                   help="only the cells whose name matches one of these comma-separated patterns (e.g. 'lora-base-*')")
    g.add_argument("--no-summary", action="store_true", help="do not write the summary afterwards")
    g.set_defaults(fn=cmd_grid_run)
    g = gsub.add_parser("status", help="one line per cell")
    g.add_argument("spec")
    g.add_argument("--quick", action="store_true")
    g.set_defaults(fn=cmd_grid_status)
    g = gsub.add_parser("stop", help="the running grid finishes its running cells and starts no more")
    g.add_argument("spec")
    g.add_argument("--quick", action="store_true")
    g.set_defaults(fn=cmd_grid_stop)

    g = gsub.add_parser("configs", help="write each unfinished cell's config file (train them elsewhere)")
    g.add_argument("spec")
    g.add_argument("dir", help="folder for <cell>.json files")
    g.add_argument("--quick", action="store_true")
    g.add_argument("--shard", default=None, metavar="i/n", help="only the cells whose index %% n == i")
    g.add_argument("--match", default=None, metavar="PATTERNS", help="only the cells whose name matches a pattern")
    g.set_defaults(fn=cmd_grid_configs)

    p = sub.add_parser("summary", help="figures and tables from a grid's saved results")
    p.add_argument("target", metavar="ROOT_OR_SPEC", help="a results folder or a grid spec (its output_root)")
    p.add_argument("--quick", action="store_true", help="with a spec: its quick output_root")
    p.add_argument("--no-notebook", action="store_true", help="write the files only, without summary.ipynb/.html")
    p.set_defaults(fn=cmd_summary)

    p = sub.add_parser("cell", help="run one cell of a grid")
    p.add_argument("spec")
    p.add_argument("cell_name")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--write-config", metavar="PATH", default="",
                   help="only write the cell's training config (JSON) for `accelerate launch -m ddpo_study train PATH`")
    p.set_defaults(fn=cmd_cell)

    p = sub.add_parser("diagnose", help="a fine-tuned model against its base: collapse or loading bug? (HTML report)",
                       description="Compare a tuned model with its base on the same prompts and seeds: the "
                       "cross-prompt collapse with shared and per-prompt seeds, whether the weights are in effect, a "
                       "LoRA-scale sweep and a base-for-the-first-k-steps sweep, and a verdict. Writes "
                       "<out>/diagnose.html (one page, no code) and diagnose.json.")
    p.add_argument("tuned", help="a diffusers/TRL LoRA folder or file, a ddpo-pytorch checkpoint (attention-processor "
                   "LoRA), a diffusers UNet folder (or a folder with unet/), or a run folder")
    p.add_argument("--base", default=None, help="base model: toy, sd15, a pipeline folder or hub id (default: a "
                   "run folder's model, else toy)")
    p.add_argument("--prompts", default="", help="prompt set name or file (default: a run's eval prompts, toy_eval "
                   "for the toy model, else sd_animals_30)")
    p.add_argument("--num-prompts", type=int, default=16, help="the first N prompts of the set")
    p.add_argument("--num-seeds", type=int, default=4, help="images per prompt")
    p.add_argument("--reward", default="", help="reward name (default: a run's reward, else aesthetic)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: a run's, else 20)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: a run's, else 5)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta (default: a run's, else 1)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                   help="scales of the tuned update (LoRA scale, or weight interpolation for a full UNet)")
    p.add_argument("--switch-steps", type=int, nargs="+", default=None,
                   help="base-model steps k before switching to the tuned model (default: 0, T/4, T/2, 3T/4, T)")
    p.add_argument("--device", default="auto")
    p.add_argument("--clip-model", default="", help="CLIP folder or hub id (default: the toy model's, else "
                   "openai/clip-vit-large-patch14)")
    p.add_argument("--aesthetic-model", default="", help="aesthetic predictor (the toy model's, or a LAION file)")
    p.add_argument("--out", default="", help="report folder (default: runs/diagnose/<tuned model's name>)")
    p.set_defaults(fn=cmd_diagnose)

    p = sub.add_parser("remedies", help="inference-time remedies on a grid's runs vs early stopping at equal reward",
                       description="For every finished run the spec selects: the LoRA scale sweep and the "
                       "base-for-the-first-k-steps sweep at the run's own eval prompts and seeds (appended to "
                       "<output>/points.csv, resumable), then each point against the same run's training trajectory "
                       "at the same reward (remedies.md, matched_points.csv, checks.md, remedies.png).")
    p.add_argument("spec", help="a remedy spec, e.g. configs/inference_remedies.yaml")
    p.add_argument("--no-sample", action="store_true", help="only rewrite the tables and figure from points.csv")
    p.add_argument("--device", default="auto")
    p.set_defaults(fn=cmd_remedies)

    from .watch import add_parser as add_monitor_parser  # the monitor's arguments and handler live with it

    add_monitor_parser(sub)

    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
