"""The notebooks are jupytext pairs: ``notebooks/<name>.py`` (percent format, the source of truth) and the
``<name>.ipynb`` that papermill runs. Each pair must hold the same cells, the ``.ipynb`` no outputs, and the cell
notebook's ``parameters`` cell exactly the :class:`~ddpo_study.config.DDPOConfig` fields with their defaults.

After editing a ``.py``, ``make notebooks`` (``jupytext --sync notebooks/*.py``) rewrites its ``.ipynb``; JupyterLab
with jupytext saves both.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jupytext
import nbformat
import papermill
import pytest

from ddpo_study.config import DDPOConfig, field_docs

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("cell", "summary", "explore", "diagnose")


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


def expected_parameters() -> str:
    """The cell notebook's parameters cell for the current DDPOConfig (to paste when a field is added)."""
    docs = {k: v.replace(" = ", " means ").replace("=", ":") for k, v in field_docs().items()}  # papermill: one '='
    lines = ["# Every DDPOConfig field (ddpo_study/config.py); a grid spec or papermill -p overrides any of them."]
    lines += [f"{f.name} = {f.default!r}  # {docs.get(f.name, '')}".rstrip() for f in dataclasses.fields(DDPOConfig)]
    return "\n".join(lines)


def test_cell_notebook_parameters_are_the_config_fields_with_their_defaults():
    params = papermill.inspect_notebook(str(NOTEBOOKS / "cell.ipynb"))
    fields = dataclasses.fields(DDPOConfig)
    message = "notebooks/cell.py's parameters cell is stale; replace it with:\n" + expected_parameters()
    assert list(params) == [f.name for f in fields], message
    assert all(params[f.name]["default"] == repr(f.default) for f in fields), message


def test_report_notebooks_have_their_parameters():
    assert list(papermill.inspect_notebook(str(NOTEBOOKS / "summary.ipynb"))) == ["root", "allow_damaged"]
    assert {"cell_dir", "seeds", "device"} <= set(papermill.inspect_notebook(str(NOTEBOOKS / "explore.ipynb")))
    diag = papermill.inspect_notebook(str(NOTEBOOKS / "diagnose.ipynb"))
    assert {"base_model", "tuned", "prompts", "reward", "lora_scales", "switch_steps", "out_dir"} <= set(diag)
