# Folio developer entry points. `make run` starts everything; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
GEN := build/gen
PROTOS := $(shell find protos -name '*.proto')
BUF := node_modules/.bin/buf
BUF_VERSION := 1.75.0

.PHONY: setup gen run test test-unit lint bench clean

setup: $(INSTALLED) $(GEN)/.stamp

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -m libs.protogen --install-path $(GEN)
	touch $@

$(GEN)/.stamp: $(INSTALLED) $(PROTOS)
	$(BIN)/python -m libs.protogen --out $(GEN)
	touch $@

gen: $(GEN)/.stamp

run: setup
	$(BIN)/folio dev

test: setup
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

$(BUF):
	npm install --no-save --no-package-lock --silent @bufbuild/buf@$(BUF_VERSION)

lint: setup $(BUF)
	$(BIN)/python -m libs.protogen --buf-deps build/protodeps
	$(BUF) lint
	$(BUF) format --diff --exit-code
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs services gateway tests
	$(BIN)/lint-imports

bench: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) build node_modules
