# syntax=docker/dockerfile:1.7
# The Tuneguard operator image: `tuneguard operator`. Installs the project with its `operator` extra
# (kopf, kubernetes, prometheus-client) under constraints.txt, exactly as the tests do. No torch.
#   docker build -t REGISTRY/tuneguard/operator:0.1.0 .
# (scripts/build-images.sh does the same with buildah, without a daemon, and is what the tests run.)
# PYTHON_IMAGE: any Debian-based Python 3.11+ image with `python` on PATH and the venv module.
# Layers: dependencies first (pyproject.toml, constraints.txt), the project's code last, so a source
# change rebuilds only the last small layers.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
# PIP_CERT: a CA bundle for pip (a TLS-intercepting proxy's); empty: pip's own.
ARG PIP_CERT=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt ./
# The operator extra's dependencies, from pyproject.toml itself: installed through an empty copy of the
# project (no packages, placeholder readme), which is then removed.
RUN mkdir -p tuneguard operator trainer_image && touch README.md \
 && /opt/venv/bin/pip install -c constraints.txt ".[operator]" \
 && /opt/venv/bin/pip uninstall -y tuneguard \
 && /opt/venv/bin/python -c "import kopf, kubernetes, prometheus_client" \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

FROM deps AS build
ARG PIP_CERT=
# README.md stays the deps stage's placeholder: the docs are not in the image, and editing them rebuilds nothing.
COPY tuneguard/ tuneguard/
COPY operator/ operator/
# setuptools also looks for packages under trainer_image/: the operator image ships none of them.
RUN /opt/venv/bin/pip wheel -c constraints.txt --no-deps -w /dist . && cp constraints.txt /dist/

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tuneguard-operator" \
      org.opencontainers.image.description="Kubernetes operator for hallucination-aware fine-tuning" \
      org.opencontainers.image.source="https://github.com/tuneguard/tuneguard" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 tuneguard \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin tuneguard
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /dist /tmp/dist
RUN cd /tmp/dist && /opt/venv/bin/pip install -c constraints.txt --no-deps --no-cache-dir ./*.whl \
 && cd / && rm -rf /tmp/dist \
 && /opt/venv/bin/python -c "import tuneguard_operator.main, kopf, kubernetes, prometheus_client" \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# The chart runs it as 65532 with a read-only root file system (only /tmp is writable).
USER 65532:65532
EXPOSE 8080 8081
# Same endpoint as the chart's liveness probe (kopf's health server on --health-port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=4)"]
ENTRYPOINT ["tuneguard", "operator"]
CMD ["--all-namespaces", "--metrics-port=8080", "--health-port=8081"]
