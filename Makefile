# `make help` lists the targets. Everything runs inside .venv, created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Optional parts installed too: tests (dev), Ray launcher, Optuna search, Keras on JAX. EXTRAS=dev for less.
EXTRAS ?= dev,ray,search,jax
HOST ?= 127.0.0.1
PORT ?= 5000
SERVER_PORT ?= 5001
SERVER_DIR ?= $(CURDIR)/mlflow-server
# The server's run store: SQLite by default; a team uses PostgreSQL, e.g. postgresql://user:password@db-host/mlflow
SERVER_STORE ?= sqlite:///$(SERVER_DIR)/mlflow.db
SWEEP ?= optimizer=adam,adagrad,rmsprop

.DEFAULT_GOAL := help
.PHONY: help install run sweep hw3 bench test test-fast ui server plots lint format lock clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[$(EXTRAS)]"
	@touch $@

install: $(STAMP) ## create .venv and install pinned dependencies (no-op when up to date)

run: install ## the DVC pipeline: fetch MNIST, train + evaluate adam, adagrad, rmsprop, compare (dvc repro)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo "Report: reports/comparison.md (+ curves.png, confusion_grid.png); HTML plots (offline): make plots"
	@echo "Browse the runs: make ui  (then open http://$(HOST):$(PORT))"

sweep: install ## a Hydra sweep outside DVC (SWEEP="optimizer=adam,adagrad,rmsprop" by default)
	$(BIN)/python -m src.train -m $(SWEEP)

hw3: install ## homework Q4: adam/adagrad/rmsprop x 3 seeds, then the table beside the homework's numbers
	$(BIN)/python -m src.train -m experiment=hw3_q4
	$(BIN)/python -m src.homework

test: install ## run the whole test suite
	$(BIN)/python -m pytest

test-fast: install ## run the tests that train nothing
	$(BIN)/python -m pytest -m "not slow"

ui: install ## MLflow UI for the project's store on http://$(HOST):$(PORT) (HOST=0.0.0.0 to share)
	$(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" --host $(HOST) --port $(PORT)

server: install ## team tracking server on http://$(HOST):$(SERVER_PORT) (SERVER_STORE=postgresql://... for a team)
	@mkdir -p "$(SERVER_DIR)/artifacts"
	$(BIN)/mlflow server --backend-store-uri "$(SERVER_STORE)" --artifacts-destination "$(SERVER_DIR)/artifacts" \
		--host $(HOST) --port $(SERVER_PORT) --workers 1

plots: install ## DVC's plots as one HTML page that renders offline (vega inlined): dvc_plots/index.html
	$(BIN)/dvc plots show --html-template .dvc/plots/offline.html -o dvc_plots

bench: install ## benchmarks vs bare Keras: epoch time, sweep, memory, no-op dvc repro (~15 min; see docs/benchmarks.md)
	$(BIN)/python benchmarks/bench.py

lint: install ## ruff lint and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install ## ruff: fix what it can and format
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

lock: install ## rewrite requirements.lock from the current .venv
	{ echo "# Every package of a working environment, from \`pip freeze\` (make lock). make install uses it as constraints."; \
	  $(BIN)/python -m pip freeze --exclude-editable; } > requirements.lock

clean: ## delete Hydra outputs (outputs/, multirun/, with the backups of unfinished runs) and caches; keeps mlflow.db, mlartifacts/, data/, runs/
	rm -rf outputs multirun dvc_plots .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +
