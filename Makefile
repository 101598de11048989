# Two commands do all set-up: `make study` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: study study-quick test venv toy-model clean-venv

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

toy-model: $(STAMP)
	$(BIN)/python -m ddpo_study.toy.pretrain

clean-venv:
	rm -rf $(VENV)
