# seqscore: train -> export -> score. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# EXAMPLE=ragged: the embedded ragged example (lengths 1..32) instead of the 4-step default, in
# its own folders so that the default model and demo stay as they are. Not artifacts/ragged:
# training replaces its artifacts folder as a whole, so a default run would remove it.
EXAMPLE ?= default
ifeq ($(EXAMPLE),default)
DEMO_DIR ?= build/demo
else
ARTIFACTS ?= artifacts-$(EXAMPLE)
DEMO_DIR ?= build/demo-$(EXAMPLE)
endif
EXAMPLE_FLAG := $(if $(filter-out default,$(EXAMPLE)),--example $(EXAMPLE))
ARTIFACTS ?= artifacts
FIXTURE_BUILD := build/fixture
# The demo scores rows drawn by the training data's rule with another seed: fresh rows, not the
# ones it trained on, so that its drift section shows what small, harmless drift looks like.
DEMO_SEED := 1
# pip's notices about package indexes this machine does not have are noise, not errors
QUIET_PIP := grep -v -e 'is ignored: it is neither a file nor a directory' || true
# mkdocs' INFO lines (cleaning, building, built in N s) are noise; --quiet would also hide the
# warnings that strict mode turns into a failure
QUIET_DOCS := { grep -v -e '^INFO ' || true; }

.PHONY: help setup java data train export score demo test test-quick bench fixture lint docs fmt clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(STAMP) java ## create .venv with the scoring runtime and every extra (train, spark, dev, delta)

# PYTHONWARNINGS: setuptools warns (12 lines) that folders named like the packages may shadow
# them in an editable install; here those folders are the packages.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	PYTHONWARNINGS='ignore:Editable installation' $(VENV)/bin/pip install --quiet -e '.[train,spark,dev,delta]' 2>&1 | $(QUIET_PIP)
	TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0 $(PY) -c 'import numpy, pyarrow, onnxruntime, tensorflow, tf2onnx, pyspark, mkdocs'
	touch $@

java: ## make sure a Java runtime exists for Spark (installs one with apt-get when missing)
	@if command -v java >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing a Java runtime for Spark (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; \
	else echo "warning: no java on PATH; the Spark tests will be skipped (install a JRE 17+)" >&2; fi

data: $(STAMP) ## write the embedded default dataset to data/default.parquet
	@mkdir -p data
	$(PY) -m train --write-default data/default.parquet

train: $(STAMP) ## fit the LSTM (DATA=file.parquet, or X=X.txt Y=Y.txt, or EXAMPLE=ragged; default: embedded data)
	$(PY) -m train --artifacts $(ARTIFACTS) $(if $(DATA),--data $(DATA)) $(if $(X),--x $(X) --y $(Y)) $(if $(DATA)$(X),,$(EXAMPLE_FLAG)) $(TRAIN_FLAGS)

$(ARTIFACTS)/model.keras: | $(STAMP)
	$(MAKE) train

$(ARTIFACTS)/model.onnx: $(ARTIFACTS)/model.keras
	$(PY) -m export --artifacts $(ARTIFACTS)

export: $(ARTIFACTS)/model.keras ## convert to a verified artifacts/model.onnx (runs train first if needed)
	$(PY) -m export --artifacts $(ARTIFACTS) $(EXPORT_FLAGS)

score: $(ARTIFACTS)/model.onnx ## score a Parquet file or directory: make score IN=in.parquet OUT=out.parquet
	@if [ -z "$(IN)" ] || [ -z "$(OUT)" ]; then echo "usage: make score IN=input.parquet OUT=output.parquet" >&2; exit 2; fi
	$(PY) -m score $(IN) $(OUT) --model $(ARTIFACTS)/model.onnx $(SCORE_FLAGS)

demo: setup ## set up, train on the embedded default (EXAMPLE=ragged: the ragged one), export, score fresh rows, preview
	$(MAKE) train TRAIN_FLAGS=--quiet
	$(MAKE) export
	@mkdir -p $(DEMO_DIR)
	$(PY) -m train --write-default $(DEMO_DIR)/sample.parquet --seed $(DEMO_SEED) $(EXAMPLE_FLAG)
	$(PY) -m score $(DEMO_DIR)/sample.parquet $(DEMO_DIR)/scored.parquet --model $(ARTIFACTS)/model.onnx --summary $(DEMO_DIR)/summary.json
	@$(PY) -m score.preview $(DEMO_DIR)/scored.parquet 5
	@echo "scored file: $(DEMO_DIR)/scored.parquet  summary: $(DEMO_DIR)/summary.json"

test: setup lint docs ## run the lint checks, build the docs and run the whole test suite (what CI runs)
	$(PY) -m pytest -q

test-quick: $(STAMP) ## the suite without the slow tests (training, Spark)
	$(PY) -m pytest -q -m 'not slow'

bench: setup ## benchmark the job against Keras predict and raw onnxruntime (BENCH_FLAGS=--quick: a smoke run)
	$(PY) -m bench $(BENCH_FLAGS)

fixture: $(STAMP) ## regenerate the small ONNX models the scoring tests use (tests/fixtures/model.onnx, ragged.onnx)
	$(PY) -m train --artifacts $(FIXTURE_BUILD)-ragged --example ragged --layers 1 --units 16 --epochs 15 --quiet
	$(PY) -m export --artifacts $(FIXTURE_BUILD)-ragged --output tests/fixtures/ragged.onnx
	$(PY) -m train --artifacts $(FIXTURE_BUILD) --layers 1 --units 16 --epochs 15 --quiet
	$(PY) -m export --artifacts $(FIXTURE_BUILD) --output tests/fixtures/model.onnx  # its report stays beside them

lint: $(STAMP) ## check style and common mistakes, and that no module imports another's private names (changes nothing)
	$(VENV)/bin/ruff check train export score tests bench tools
	$(PY) tools/lint_private_imports.py train export score tests bench tools

docs: $(STAMP) ## build the docs/ site into build/site (mkdocs-material, strict: a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict 2>&1 | $(QUIET_DOCS)

fmt: $(STAMP) ## format the code in place
	$(VENV)/bin/ruff format train export score tests bench

clean: ## remove artifacts, build output and caches (keeps .venv)
	rm -rf $(ARTIFACTS) build data .pytest_cache .hypothesis .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.venv/*' -exec rm -rf {} +
