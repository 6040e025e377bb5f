# Two entry points: `make demo` (train -> eval -> fill offline on the embedded sample) and
# `make test`. Both create .venv on first use. torch is installed first, on its own, so that the
# CPU build pinned here is used rather than whatever a dependency range would pull.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
DEMO   := runs/demo
DATA   := assets/eli5-sample.jsonl.gz

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/mlmkit train --model assets/tiny-roberta --from-scratch --data $(DATA) \
	  --text-field answers.text --output $(DEMO) --overwrite \
	  --learning-rate 1e-3 --batch-size 32 --warmup-ratio 0.06 --epochs 3
	$(BIN)/mlmkit eval --model $(DEMO) --data $(DATA) --text-field answers.text
	$(BIN)/mlmkit fill $(DEMO) "The Milky Way is a <mask> galaxy." --top-k 3

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
