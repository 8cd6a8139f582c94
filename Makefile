# `make help` lists the targets. Everything runs inside .venv, created on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Optional parts installed too: tests (dev), Ray launcher, Optuna search, Keras on JAX, the PostgreSQL driver,
# MLflow's basic-auth app. EXTRAS=dev for less.
EXTRAS ?= dev,ray,search,jax,postgres,auth
# `:=`, not `?=`: a HOST or PORT that a shell or platform exports must not move a server off loopback;
# give them on make's command line (`make ui PORT=8080`; off loopback see docs/security.md).
HOST := 127.0.0.1
PORT := 5000
# The MLflow UI links that sweeps and `make run` print point at `make ui` (src/tracking/links.py)
export MLFLOW_UI_HOST = $(HOST)
export MLFLOW_UI_PORT = $(PORT)
SERVER_PORT ?= 5001
SERVE_PORT ?= 5002
SERVER_DIR ?= $(CURDIR)/mlflow-server
# The server's run store: SQLite by default; a team uses PostgreSQL. A password goes in a pgpass file (make db)
# or an exported SERVER_STORE, never on make's command line, where `ps` shows it; it reaches src.tracking.server
# through the environment of `make server` alone (a global export would leak into every recipe, `make test`'s too).
SERVER_STORE ?= sqlite:///$(SERVER_DIR)/mlflow.db
SWEEP ?= optimizer=adam,adagrad,rmsprop

.DEFAULT_GOAL := help
FORCE:
.PHONY: help install run fair callbacks sweep hw3 bench bench-vectorized test test-fast test-cluster ui server db db-stop db-rm plots screenshots lint format lock clean serve

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# EXTRAS of the last install; rewritten only when it differs, which makes the stamp out of date
# (`EXTRAS=dev make install` on a .venv installed with other extras installs again).
EXTRAS_USED := $(VENV)/.extras
$(EXTRAS_USED): FORCE
	@mkdir -p $(VENV)
	@test "$$(cat $@ 2>/dev/null)" = "$(EXTRAS)" || echo "$(EXTRAS)" > $@

$(STAMP): pyproject.toml requirements.lock $(EXTRAS_USED)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[$(EXTRAS)]"
	@touch $@

install: $(STAMP) ## create .venv and install pinned dependencies (no-op when up to date)

run: install ## the DVC pipeline: fetch MNIST, train + score each optimizer x seed of params.yaml, compare (dvc repro)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo "Report: reports/comparison.md (+ curves.png, confusion_grid.png); HTML plots (offline): make plots"
	@echo "Browse the runs: make ui  (then open http://$(HOST):$(PORT))"

fair: install ## the fair comparison: each optimizer's learning rate tuned (equal budget), judged over seeds on three workloads (dvc repro fair/dvc.yaml, ~13 min here)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro fair/dvc.yaml
	@echo "Report: reports/fair/fair.md (+ lr_sensitivity.png, curves.png, budget.png); how to read it: docs/fair.md"

callbacks: install ## the callback study: EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, TensorBoard vs none, at the fair report's tuned rates (callbacks/dvc.yaml, ~8 min here)
	@# MNIST (the root pipeline's fetch), then the study's own stages only (--single-item): it reads the committed
	@# fair report, so a changed one reruns the study, but `make callbacks` never retrains the fair comparison
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro fetch
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro --single-item callbacks/dvc.yaml
	@echo "Report: reports/callbacks/callbacks.md (+ pareto.png); how to read it: docs/callbacks.md"

sweep: install ## a Hydra sweep outside DVC (SWEEP="optimizer=adam,adagrad,rmsprop" by default)
	$(BIN)/python -m src.train -m $(SWEEP)

hw3: install ## homework Q4: adam/adagrad/rmsprop x seeds 1-5 (batch 1000, 198 steps), then the table beside the homework's numbers
	$(BIN)/python -m src.train -m experiment=hw3_q4
	$(BIN)/python -m src.homework

# More pytest options: make test PYTEST_ARGS="--cov=src" (coverage), "-k registry"
PYTEST_ARGS ?=
# Two pytest-xdist workers, one test file each at a time (a file's shared fixtures stay in one worker), the
# longest files first: 7 min 46 s-8 min 44 s (365 tests) on the 2-core machine; a third worker barely pays (docs/benchmarks.md).
TEST_WORKERS ?= 2
test: install ## run the whole test suite on TEST_WORKERS=2 processes (prints the 15 slowest tests)
	$(BIN)/python -m pytest --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: install ## run the tests that train nothing and start no process, on TEST_WORKERS processes
	$(BIN)/python -m pytest -m "not slow" --durations=5 -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-cluster: install ## the Ray cluster tests: 3 nodes on this machine, a node lost mid-sweep, bad input (docs/scaling.md)
	$(BIN)/python -m pytest tests/test_scaling.py -k "node or cluster"

# One person's UI: one uvicorn worker (MLflow's default is 4, each importing its server), no GenAI job runner.
UI_WORKERS ?= 1
ui: install ## MLflow UI for the project's store on http://$(HOST):$(PORT) (off loopback: ALLOW_ANONYMOUS=1)
	@$(BIN)/python -m src.tracking.server check-ui-host --host "$(HOST)" $(if $(filter 1 true yes,$(ALLOW_ANONYMOUS)),--allow-anonymous)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" \
		--host $(HOST) --port $(PORT) --workers $(UI_WORKERS)

serve: install ## serve the registered model's champion on http://$(HOST):$(SERVE_PORT)/invocations (MLflow's scoring server)
	MLFLOW_TRACKING_URI="$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db}" $(BIN)/python -m src.tracking.serve --host $(HOST) --port $(SERVE_PORT)

# make db: a PostgreSQL cluster of the project's own, on 127.0.0.1 (its password in $(DB_DIR)/pgpass, for PGPASSFILE)
DB_DIR ?= $(CURDIR)/postgres
# AUTH=1: MLflow's access control; the admin password from MLFLOW_AUTH_ADMIN_PASSWORD or ADMIN_PASSWORD_FILE
AUTH ?=
ADMIN_PASSWORD_FILE ?=
SERVER_WORKERS ?= 1

server: export SERVER_STORE := $(SERVER_STORE)
# Off loopback, AUTH=1 or ALLOW_ANONYMOUS=1 (a trusted network) is required; `:=`: an exported one does not count.
ALLOW_ANONYMOUS :=
server: install ## team tracking server on http://$(HOST):$(SERVER_PORT) (SERVER_STORE=postgresql://..., AUTH=1: logins)
	@# not echoed: SERVER_STORE may hold a password (make db's keeps it in a pgpass file instead)
	@PGPASSFILE="$${PGPASSFILE:-$(DB_DIR)/pgpass}" $(BIN)/python -m src.tracking.server serve \
		--server-dir "$(SERVER_DIR)" --host $(HOST) --port $(SERVER_PORT) --workers $(SERVER_WORKERS) \
		$(if $(AUTH),--auth) $(if $(filter 1 true yes,$(ALLOW_ANONYMOUS)),--allow-anonymous) \
		$(if $(ADMIN_PASSWORD_FILE),--admin-password-file "$(ADMIN_PASSWORD_FILE)")

db: install ## start PostgreSQL in $(DB_DIR) on 127.0.0.1 (created on first use); prints the SERVER_STORE to use
	$(BIN)/python -m src.tracking.server db-start "$(DB_DIR)"

db-stop: install ## stop the PostgreSQL of make db (its data stays in $(DB_DIR))
	$(BIN)/python -m src.tracking.server db-stop "$(DB_DIR)"

db-rm: install ## stop the PostgreSQL of make db and delete $(DB_DIR) with every run stored in it
	$(BIN)/python -m src.tracking.server db-rm "$(DB_DIR)"

plots: install ## DVC's plots as one HTML page that renders offline (vega inlined): dvc_plots/index.html
	$(BIN)/dvc plots show --html-template .dvc/plots/offline.html -o dvc_plots

screenshots: install ## the README's MLflow UI screenshots (docs/img/) from the latest comparison or sweep, in headless Chromium
	$(BIN)/python -m docs.screenshots --store "$${MLFLOW_TRACKING_URI:-$(CURDIR)/mlflow.db}"

bench: install ## benchmarks vs bare Keras: epoch time, sweep, memory, no-op dvc repro, make run vs train time (~20 min; see docs/benchmarks.md)
	$(BIN)/python benchmarks/bench.py

bench-vectorized: install ## the vectorized engine vs the sequential one on the same trials: trials/s at N = 12, 36, 60 (~2 min; docs/benchmarks.md)
	$(BIN)/python benchmarks/vectorized.py

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
