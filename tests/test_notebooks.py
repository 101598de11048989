"""The notebooks are jupytext pairs: ``notebooks/<name>.py`` (percent format, the source of truth) and the
``<name>.ipynb`` that papermill runs. Each pair must hold the same cells and the ``.ipynb`` no outputs; the cell
notebook takes the run's config as one parameter (a dict, or a config file), so a new config field needs no edit
here.

After editing a ``.py``, ``make notebooks`` (``jupytext --sync notebooks/*.py``) rewrites its ``.ipynb``; JupyterLab
with jupytext saves both.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from ddpo_study.config import DDPOConfig, load_config

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("cell", "summary", "diagnose")


def cells(nb) -> list[tuple[str, str, list[str]]]:
    return [(c.cell_type, c.source, list(c.metadata.get("tags", []))) for c in nb.cells]


def test_every_notebook_is_paired_with_its_script():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
    assert not (NOTEBOOKS / "make_notebooks.py").exists()


@pytest.mark.parametrize("name", NAMES)
def test_the_ipynb_is_in_sync_with_its_py_and_holds_no_outputs(name):
    script = jupytext.read(NOTEBOOKS / f"{name}.py")
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert cells(notebook) == cells(script), (
        f"notebooks/{name}.ipynb differs from notebooks/{name}.py: run `make notebooks` (jupytext --sync)")
    assert notebook.metadata["jupytext"]["formats"] == "ipynb,py:percent"
    assert notebook.metadata["kernelspec"]["name"] == "python3"  # the kernel papermill and `make lab` use
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{name}.ipynb has stored outputs"
    assert sum("parameters" in tags for _, _, tags in cells(notebook)) == 1  # papermill injects after it


def test_the_cell_notebook_takes_the_config_as_one_parameter(tmp_path):
    params = papermill.inspect_notebook(str(NOTEBOOKS / "cell.ipynb"))
    assert list(params) == ["config", "config_path"]
    assert (params["config"]["default"], params["config_path"]["default"]) == ("{}", '""')
    # what its code builds from them: a dict, or a file with the dict on top (the notebook's own lines, run here)
    code = next(c.source for c in jupytext.read(NOTEBOOKS / "cell.py").cells if "load_config(" in c.source)
    line = next(x for x in code.splitlines() if x.startswith("cfg = "))
    (tmp_path / "cfg.yaml").write_text("seed: 3\nnum_epochs: 2\n")
    for config, config_path, want in (({}, "", DDPOConfig()), ({"seed": 1}, "", DDPOConfig(seed=1)),
                                      ({"seed": 1}, str(tmp_path / "cfg.yaml"), DDPOConfig(seed=1, num_epochs=2))):
        scope = {"config": config, "config_path": config_path, "DDPOConfig": DDPOConfig, "load_config": load_config}
        exec(line, scope)
        assert scope["cfg"] == want


def test_report_notebooks_have_their_parameters():
    assert list(papermill.inspect_notebook(str(NOTEBOOKS / "summary.ipynb"))) == ["root", "allow_damaged"]
    diag = papermill.inspect_notebook(str(NOTEBOOKS / "diagnose.ipynb"))
    assert {"base_model", "tuned", "prompts", "reward", "lora_scales", "switch_steps", "out_dir"} <= set(diag)
