# Every target sets up what it needs (virtualenv, control-plane binaries), cached under ~/.cache/tuneguard.
SHELL := /bin/bash
VENV = $(shell scripts/bootstrap-python.sh)
PYTEST_ARGS ?=
# This checkout's packages come first, whichever clone the shared venv was created from.
export PYTHONPATH := $(CURDIR):$(CURDIR)/operator:$(CURDIR)/trainer_image

.PHONY: quickstart test test-unit crd cluster-up cluster-down control-plane lint-chart

## Fine-tune the bundled SmolLM2-135M on the bundled facts, on CPU, and print base vs tuned figures.
quickstart:
	@venv=$(VENV); "$$venv/bin/tuneguard" run examples/quickstart.yaml --out runs/quickstart

## The whole test suite: unit tests, then the real control plane (built once and cached) and end-to-end tests.
test:
	@venv=$(VENV); scripts/build-control-plane.sh >/dev/null && \
	  "$$venv/bin/python" -m pytest $(PYTEST_ARGS)

## Unit tests only (seconds, no control plane).
test-unit:
	@venv=$(VENV); "$$venv/bin/python" -m pytest tests/unit $(PYTEST_ARGS)

## Regenerate crds/ (and the chart's copy) from tuneguard/api.py.
crd:
	@venv=$(VENV); "$$venv/bin/tuneguard" crd > crds/tuneguard.io_finetunejobs.yaml

## Start a local control plane with simulated GPU nodes; prints `export KUBECONFIG=...`.
cluster-up:
	@venv=$(VENV); scripts/build-control-plane.sh >/dev/null && "$$venv/bin/python" -m tests.cluster up

## Stop every process cluster-up started and remove its state.
cluster-down:
	@venv=$(VENV); "$$venv/bin/python" -m tests.cluster down
