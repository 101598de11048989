# Two commands do all set-up: `make study` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: study study-quick test figures venv toy-model toy-flow clean-venv lab notebooks

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: on the reference machine these two resolve from local disk.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

study: $(STAMP)
	$(BIN)/python -m ddpo_study study

study-quick: $(STAMP)
	$(BIN)/python -m ddpo_study study --quick

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

# Every figure README.md and docs/*.md embed, rebuilt from committed data (ddpo_study/report/figures_index.py);
# a re-run leaves `git status` clean.
figures: $(STAMP)
	$(BIN)/python -m ddpo_study figures

# JupyterLab on notebooks/ (the `lab` extra, installed on first use) with the project's kernel (python3, registered
# above); jupytext pairs each notebook with its percent-format .py, so an edit in Lab saves both.
LAB_STAMP := $(VENV)/.lab-installed
$(LAB_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[lab]'
	touch $(LAB_STAMP)

lab: $(LAB_STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $(LAB_ARGS)  # e.g. LAB_ARGS=--allow-root in a root container

# After editing notebooks/*.py outside Lab: rewrite their .ipynb (tests/test_notebooks.py checks the pairs).
notebooks: $(STAMP)
	$(BIN)/jupytext --sync notebooks/*.py

toy-model: $(STAMP)
	$(BIN)/python -m ddpo_study.toy.pretrain

# The flow-matching toy (an SD3 pipeline on the UNet toy's text encoder and VAE) and its base eval; resumes from
# data/toy-flow-ckpt if killed.
toy-flow: $(STAMP)
	$(BIN)/python -m ddpo_study.toy.pretrain_flow --out data/toy-flow

clean-venv:
	rm -rf $(VENV)
