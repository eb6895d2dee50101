# Every target sets up what it needs (virtualenv, control-plane binaries), cached under ~/.cache/tuneguard.
SHELL := /bin/bash
VENV = $(shell scripts/bootstrap-python.sh)
PYTEST_ARGS ?=
# This checkout's packages come first, whichever clone the shared venv was created from.
export PYTHONPATH := $(CURDIR):$(CURDIR)/operator:$(CURDIR)/trainer_image

.PHONY: quickstart test test-unit generate cluster-up cluster-down

## Fine-tune the bundled SmolLM2-135M on the bundled facts, on CPU, and print base vs tuned figures.
quickstart:
	@venv=$(VENV); "$$venv/bin/tuneguard" run examples/quickstart.yaml --out runs/quickstart

## The whole test suite: unit tests, then the real control plane (built once and cached) and end-to-end tests.
## As root, the whole suite also builds what only the real-pod test needs (both images, then the Prometheus
## Operator and a Prometheus with Kubernetes discovery) in the background, beside the control-plane build and the
## other tests (the test waits on the builds' locks; nothing to do when cached).
PREBUILD_IMAGES = [ -z "$(PYTEST_ARGS)" ] && [ "$$(id -u)" = 0 ] && [ "$${TUNEGUARD_REAL_NODE_E2E:-1}" != 0 ]
test:
	@venv=$(VENV); scripts/ensure-node-packages.sh >/dev/null && \
	  if $(PREBUILD_IMAGES); then log=$${TUNEGUARD_CACHE:-$$HOME/.cache/tuneguard}/images/prebuild.log && \
	    mkdir -p "$${log%/*}" && ( (scripts/build-images.sh --archive operator trainer-cpu && \
	      scripts/build-control-plane.sh prometheus-operator prometheus) >"$$log" 2>&1 &) fi && \
	  scripts/build-control-plane.sh >/dev/null && scripts/ensure-prometheus.sh >/dev/null && \
	  "$$venv/bin/python" -m pytest $(PYTEST_ARGS)

## Unit tests only (seconds, no control plane).
test-unit:
	@venv=$(VENV); "$$venv/bin/python" -m pytest tests/unit $(PYTEST_ARGS)

## Regenerate everything generated from one source: crds/ and the chart's copy (tuneguard/api.py), the
## dashboard and alert rules (tuneguard/contract.py), and the promtool tests of the rules.
generate:
	@venv=$(VENV); "$$venv/bin/python" -m tuneguard.cli crd > crds/tuneguard.io_finetunejobs.yaml && \
	  cp crds/tuneguard.io_finetunejobs.yaml charts/tuneguard/crds/ && \
	  "$$venv/bin/python" -m tuneguard.dashboard --write && \
	  "$$venv/bin/python" -m tuneguard.alerts --write && \
	  "$$venv/bin/python" -m tests.prometheus.alert_tests --write

## Start a local control plane with simulated GPU nodes and, as root, a real node (kubelet + containerd;
## REAL_NODE=0 leaves it out); prints `export KUBECONFIG=...`.
REAL_NODE ?= $(shell [ "$$(id -u)" = 0 ] && echo 1 || echo 0)
cluster-up:
	@venv=$(VENV); scripts/build-control-plane.sh >/dev/null && \
	  if [ "$(REAL_NODE)" = 1 ]; then scripts/ensure-node-packages.sh >/dev/null; fi && \
	  "$$venv/bin/python" -m tests.cluster up $(if $(filter 1,$(REAL_NODE)),--real-node)

## Stop every process cluster-up started and remove its state, and undo what a real node changed on the
## machine (also after a crash).
cluster-down:
	@venv=$(VENV); "$$venv/bin/python" -m tests.cluster down
