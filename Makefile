# kdprune: `make run` sets up and runs the whole pipeline; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1

.PHONY: setup run repro test verify bench exp gpu-check deploy serve ui prefect-ui stop clean profile study data stores-up stores-down push pull ray-up ray-down

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $@

setup: $(BIN)/.installed
	@test -d .dvc || $(BIN)/dvc init --quiet
	@$(BIN)/dvc config core.analytics false
	@test -f mlflow.db || $(BIN)/python -m flows init
	@# the project's own Prefect server (started on demand, never another checkout's) and the nightly
	@# deployment on it, registered paused when that server lacks it: `make serve` turns it on
	@$(BIN)/python -m flows deploy --paused

run: setup  ## the whole pipeline on params.yaml (stale stages only), then the report
	$(BIN)/python -m flows pipeline

profile: setup  ## write params.yaml from profiles/$(NAME).yaml (digits = the default), e.g. make profile NAME=fashion_mnist
	$(BIN)/python -m flows profile $(NAME)

study: setup  ## one line per study: params from profiles/$(NAME).yaml, then the sweep; e.g. make study NAME=fashion_mnist
	$(BIN)/python -m flows sweep --profile $(NAME)

repro: setup  ## the same through DVC: each stage runs its Prefect flow
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest -q

verify: setup  ## re-run the pipeline in a scratch copy; every committed result must match (bytes or seed noise)
	$(BIN)/python -m flows verify

bench: setup  ## every benchmark that can run here -> reports/bench.json (see bench/); missing data: a skipped row
	$(BIN)/python -m flows bench

exp: setup  ## the experiments side by side, readable: `dvc exp show` with only the columns that differ
	$(BIN)/dvc exp show --only-changed --drop 'Created|kd_weight'

gpu-check: setup  ## on CUDA: teacher (1 GPU and every GPU via teacher.workers) and a KD student on synthetic 224 px images; images/s, peak GPU memory as JSON
	$(BIN)/python -m bench.gpu_check

data: setup  ## fetch the data profile $(NAME) needs (Debian package when apt is usable), e.g. make data NAME=fashion_mnist; NAME=synthetic ARGS="--out DIR --classes 1000 --images 100000 --size 64" writes a synthetic image folder, NAME=export ARGS="--dataset fashion_mnist --out DIR" a dataset as one
	$(BIN)/python -m flows data $(NAME) $(ARGS)

deploy: setup  ## create the pipeline's deployment with its cron schedule on the local Prefect server
	$(BIN)/python -m flows deploy

serve: setup  ## resume and serve the deployment: scheduled runs execute in this process
	$(BIN)/python -m flows serve

ui: setup  ## the MLflow UI on http://127.0.0.1:5000 (PORT=N: another); prints the link to the students of the latest sweep
	$(BIN)/python -m flows ui $(if $(PORT),--port $(PORT))

prefect-ui: setup  ## print where this project's Prefect UI is (its own local server, started on demand)
	@$(BIN)/python -c "import os; from servers.runtime import configure_env as c, ensure_prefect_server as e; c(); \
	    print('Prefect UI:', e().removesuffix('/api'), '(PREFECT_HOME=' + os.environ['PREFECT_HOME'] + ')')"

stop:  ## stop the local Prefect server
	-$(BIN)/python -m flows stop

RAY_PORT ?= 6379
RAY_START_ARGS ?=
ray-up: setup  ## a local Ray head on 127.0.0.1:$(RAY_PORT), every port on loopback, token auth, dashboard off; then runner.kind: ray, runner.address: auto
	@# Ray's token (~/.ray/auth_token) made if missing and kept private; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0:
	@# Ray keeps 127.0.0.1 as the node's address (else it swaps in the LAN address and binds everywhere)
	@$(BIN)/ray get-auth-token --generate >/dev/null && chmod 600 $(HOME)/.ray/auth_token
	RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 RAY_worker_niceness=0 $(BIN)/ray start --head --node-ip-address=127.0.0.1 --port=$(RAY_PORT) \
	    --include-dashboard=false --disable-usage-stats $(RAY_START_ARGS)
	@echo "[kdprune] Ray head on 127.0.0.1:$(RAY_PORT): set runner.kind: ray and runner.address: auto (or 127.0.0.1:$(RAY_PORT)) in params.yaml"

ray-down:  ## stop the Ray processes `make ray-up` (or `ray start`) started on this machine
	-$(BIN)/ray stop

stores-up: setup  ## the lab's stores: PostgreSQL, MLflow and Prefect servers on it (KDPRUNE_BIND + KDPRUNE_AUTH=1 to share)
	$(BIN)/python -m flows stores up

stores-down:  ## stop the lab's servers and PostgreSQL (data kept)
	$(BIN)/python -m flows stores down

push: setup  ## dvc push to the default remote (KDPRUNE_DVC_REMOTE=<dir> if none is configured)
	$(BIN)/python -m flows push

pull: setup  ## dvc pull from the default remote (KDPRUNE_DVC_REMOTE=<dir> if none is configured)
	$(BIN)/python -m flows pull

clean:  ## remove pipeline outputs and the local stores (keeps the virtualenv, the lab's stores under .kdprune/postgres and the committed dvc.lock: `make run` re-creates what it records)
	rm -rf data/prepared data/scores data/manifests models/teacher models/teachers models/students reports/*.csv \
	    reports/*.md reports/*.png mlflow.db mlartifacts .prefect .kdprune/checkpoints .kdprune/proxies .kdprune/runs
