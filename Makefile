# Set-up and everyday commands. `make train` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 6006
LOGDIR ?= outputs
ARGS   ?=

.PHONY: install data train test lint format tensorboard compare bench gpu-bundle clean

install: $(STAMP) data  ## venv + editable package with dev extras + the data set (idempotent)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	-$(BIN)/python -m pip install --upgrade pip  # best effort: an old pip works too
	# compat: the checkout itself goes on the path (a .pth), so Hydra finds hydra_plugins/ from
	# any folder; the default editable finder is an import hook that Hydra's plugin scan cannot walk
	$(BIN)/python -m pip install -e '.[dev,optuna,export,notebook,trackers]' --config-settings editable_mode=compat
	-$(BIN)/python -m pip uninstall -y -q hydra-optuna-sweeper 2>/dev/null  # replaced by fmnist's sweeper; it pinned optuna < 3
	touch $(STAMP)

data: $(STAMP)  ## find, fetch and check Fashion-MNIST (Debian package, torchvision, apt-get)
	$(BIN)/fmnist-data

train: install  ## train the default config (the article's network, 5 epochs)
	$(BIN)/python train.py $(ARGS)

test: install  ## the whole test suite, on the real data
	$(BIN)/python -m pytest $(ARGS)

lint:
	$(BIN)/ruff check fmnist hydra_plugins tests scripts train.py
	$(BIN)/ruff format --check fmnist hydra_plugins tests scripts train.py

format:
	$(BIN)/ruff format fmnist hydra_plugins tests scripts train.py
	$(BIN)/ruff check --fix fmnist hydra_plugins tests scripts train.py

tensorboard: $(STAMP)  ## serve outputs/ on 127.0.0.1 only
	LOGDIR=$(LOGDIR) PORT=$(PORT) TENSORBOARD=$(BIN)/tensorboard scripts/tensorboard.sh

compare: $(STAMP)  ## make compare SWEEP=outputs/sweeps/<date>/<time>
	$(BIN)/fmnist-compare $(or $(SWEEP),outputs) $(ARGS)

bench: install  ## speed benchmark against the article's loop (writes bench.json)
	$(BIN)/python scripts/bench.py $(ARGS)
	$(BIN)/python scripts/bench_fused.py
	$(BIN)/python scripts/bench_pool.py

gpu-bundle: install  ## wheels + data set for scripts/gpu-check --bundle on a GPU machine without internet
	$(BIN)/python scripts/gpu_bundle.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
