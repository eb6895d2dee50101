# syntax=docker/dockerfile:1.7
# The Tuneguard operator image: `tuneguard operator`. Installs the project with its `operator` extra
# (kopf, kubernetes, prometheus-client) under constraints.txt, exactly as the tests do. No torch.
#   docker build -t ghcr.io/tuneguard/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY tuneguard/ tuneguard/
COPY operator/ operator/
# setuptools also looks for packages under trainer_image/: the operator image ships none of them.
RUN mkdir -p trainer_image \
 && /opt/venv/bin/pip install -c constraints.txt ".[operator]" \
 && /opt/venv/bin/python -c "import tuneguard_operator, kopf, kubernetes, prometheus_client" \
 && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tuneguard-operator" \
      org.opencontainers.image.description="Kubernetes operator for hallucination-aware fine-tuning" \
      org.opencontainers.image.source="https://github.com/tuneguard/tuneguard" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 tuneguard \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin tuneguard
COPY --from=build /opt/venv /opt/venv
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
