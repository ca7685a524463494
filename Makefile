# agentrt: one entry point for set-up, running, checks and tests.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE := clients/node
NODE_STAMP := $(NODE)/node_modules/.installed
GENERATED := ':(glob)clients/python/agentrt/*/v1/**' ':(glob)clients/python/agentrt/*/__init__.py' \
	services/edge/agentrt.binpb k8s/base/edge/agentrt.binpb k8s/base/edge/envoy.yaml

.PHONY: help install dev edge test test-unit test-integration test-e2e check lint typecheck \
	protos protodeps buf-lint buf-breaking protos-check k8s-check k8s-edge image-lint bench clean

help:
	@echo "make dev      install, then run agentrt dev (all services, embedded storage)"
	@echo "make edge     make dev, with Envoy in front on 127.0.0.1:8080 (HTTP/JSON, gRPC-Web)"
	@echo "make test     install, then run every test tier (unit, integration, e2e)"
	@echo "make check    ruff, mypy, buf lint, buf breaking, generated code up to date"
	@echo "make protos   regenerate clients/python/agentrt/*/v1 from protos/"
	@echo "make bench    run the benchmarks in bench/"

install: $(STAMP) $(NODE_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# The Node.js client and plugin: its locked dependencies (the dev ones too, whatever
# NODE_ENV says: playwright-core drives the browser test), and the google/api protos its
# plugin loads beside protos/ (.build/protodeps).
$(NODE_STAMP): $(NODE)/package.json $(NODE)/package-lock.json | $(STAMP)
	cd $(NODE) && npm ci --include=dev --no-audit --no-fund --loglevel=error
	$(BIN)/python tools/protos.py deps
	@touch $@

dev: install
	$(BIN)/agentrt dev

# agentrt dev in the background, Envoy in the foreground; Ctrl-C stops both.
edge: install
	@$(BIN)/agentrt dev & dev=$$!; trap 'kill $$dev 2>/dev/null; wait $$dev || true' EXIT; \
	AGENTRT_EDGE_CORS_ORIGINS=$${AGENTRT_EDGE_CORS_ORIGINS:-*} $(BIN)/agentrt edge

test: install
	$(BIN)/pytest -q -p no:cacheprovider

test-unit: install
	$(BIN)/pytest -q -m "not integration and not e2e"

test-integration: install
	$(BIN)/pytest -q -m integration

test-e2e: install
	$(BIN)/pytest -q -m e2e

check: lint typecheck buf-lint buf-breaking protos-check
check: k8s-check image-lint

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

protodeps: install
	$(BIN)/python tools/protos.py deps

protos: install
	$(BIN)/python tools/protos.py generate
	$(BIN)/python tools/k8s_edge.py generate

buf-lint: protodeps
	$(BIN)/buf lint
	$(BIN)/buf build

buf-breaking: protodeps
	$(BIN)/python tools/protos.py breaking $${BUF_AGAINST:-HEAD~1}

protos-check: protos
	@if [ -n "$$(git status --porcelain -- $(GENERATED))" ]; then \
		git status --short -- $(GENERATED); \
		echo "generated code is out of date: run 'make protos' and commit the result"; \
		exit 1; \
	fi

# Every overlay rendered and validated strictly against the Kubernetes schemas, offline;
# the edge's Envoy configuration up to date with its template, and validated by Envoy itself.
k8s-check: install
	@for overlay in k8s/overlays/*/; do \
		echo "kubectl kustomize $$overlay | kubernetes-validate --strict"; \
		$(BIN)/kubectl kustomize "$$overlay" | $(BIN)/kubernetes-validate --strict --quiet -; \
	done
	$(BIN)/python tools/k8s_edge.py check

# The edge's Envoy configuration in k8s/base/edge, rendered from services/edge/envoy.yaml
# with the edge pod's settings, and the descriptor set it transcodes with.
k8s-edge: install
	$(BIN)/python tools/k8s_edge.py generate

image-lint: install
	$(BIN)/hadolint Containerfile

bench: install
	$(BIN)/python bench/main_path.py
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/actions.py
	$(BIN)/python bench/edge.py
	$(BIN)/python bench/engine_routing.py
	$(BIN)/python bench/engine_cpu.py
	$(BIN)/python bench/model_api.py
	$(BIN)/python bench/workflow.py
	$(BIN)/python bench/observability.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/grpc_floor.py

clean:
	rm -rf $(VENV) .build .mypy_cache .ruff_cache .pytest_cache $(NODE)/node_modules
