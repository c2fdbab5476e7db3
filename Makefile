# Tollgate — run `make help` for the list of targets.
SHELL := /bin/bash
UV ?= uv
PYTEST := $(UV) run pytest

.DEFAULT_GOAL := help

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

sync: ## Install every package of the workspace (uv)
	@command -v $(UV) >/dev/null || python3 -m pip install -q uv
	$(UV) sync --all-packages

up: sync ## Start everything (infra if missing, stand-ins, the five services), provision, seed a demo
	$(UV) run python scripts/devstack.py up

down: ## Stop exactly what `make up` started
	@$(UV) run python scripts/devstack.py down 2>/dev/null || python3 scripts/devstack.py down

status: ## Show what `make up` started and whether it answers
	$(UV) run python scripts/devstack.py status

logs: ## Tail the logs of everything `make up` started
	tail -n 50 -f .run/logs/*.log

test: sync ## Run the whole test suite against real NATS, Postgres and Redis
	$(PYTEST) -m "not chaos and not e2e" -q --durations=10

test-chaos: sync ## Fault-injection suite (kills, restarts, faulty Dodo) and the money audit
	$(PYTEST) -m chaos -q

test-e2e: sync ## Browser end-to-end tests of the web console (headless Chromium)
	$(PYTEST) -m e2e -q

lint: sync ## ruff + mypy (strict)
	$(UV) run ruff check .
	$(UV) run mypy libs/*/src services/*/src standins/src cli/src

fmt: sync ## Format and autofix
	$(UV) run ruff check --fix .
	$(UV) run ruff format .

bench: sync ## Gateway and metering benchmarks; results go to docs/benchmarks.md
	$(UV) run python bench/gateway/run.py
	$(UV) run python bench/metering/run.py

provision: sync ## Create/update JetStream streams and apply every service's migrations
	$(UV) run tollgate provision streams
	@for s in ledger tier notifier metering gateway; do $(UV) run python -m tollgate_$$s migrate; done

clean: down ## Remove run state (.run/) and caches
	rm -rf .run .pytest_cache .mypy_cache .ruff_cache

.PHONY: help sync up down status logs test test-chaos test-e2e lint fmt bench provision clean
