"""The real scheduler places GPU pods on kwok's simulated GPU nodes, and kwok runs them."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cluster import GPU_PRODUCT, GPU_RESOURCE, GPUS_PER_NODE
from tests.cluster.polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180, func_only=True)]


def gpu_pod(name: str, gpus: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "trainer", "image": "tuneguard/trainer:test",
                            "resources": {"limits": {GPU_RESOURCE: str(gpus)}}}],
        },
    }


def create(cluster, namespace: str, doc: dict) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def get(cluster, namespace: str, kind: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", kind, name, "-n", namespace, "-o", "json").stdout)


def test_gpu_nodes_advertise_gpus(cluster):
    if not cluster.simulated:
        pytest.skip("checks the simulated nodes of tests.cluster")
    nodes = json.loads(cluster.kubectl("get", "nodes", "-l", f"nvidia.com/gpu.product={GPU_PRODUCT}",
                                       "-o", "json").stdout)["items"]
    assert len(nodes) >= 2
    for node in nodes:
        assert node["status"]["allocatable"][GPU_RESOURCE] == str(GPUS_PER_NODE)
        assert node["metadata"]["labels"]["nvidia.com/gpu.count"] == str(GPUS_PER_NODE)
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"


def test_gpu_pod_is_scheduled_and_runs(cluster, namespace):
    create(cluster, namespace, gpu_pod("one-gpu", 4))
    cluster.kubectl("wait", "-n", namespace, "pod/one-gpu", "--for=jsonpath={.status.phase}=Running",
                    "--timeout=60s")
    pod = get(cluster, namespace, "pod", "one-gpu")
    node = json.loads(cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout)
    assert int(node["status"]["allocatable"][GPU_RESOURCE]) >= 4
    assert pod["status"]["podIP"], "a Running pod has an IP"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["PodScheduled"] == "True"


def test_pod_asking_more_gpus_than_any_node_stays_pending(cluster, namespace):
    create(cluster, namespace, gpu_pod("too-big", GPUS_PER_NODE + 1))

    def verdict() -> tuple[dict, dict] | None:
        pod = get(cluster, namespace, "pod", "too-big")
        scheduled = {c["type"]: c for c in pod["status"].get("conditions", [])}.get("PodScheduled")
        return (pod, scheduled) if scheduled and scheduled["status"] == "False" else None

    pod, scheduled = wait_for("a scheduling verdict", verdict,
                              describe=lambda: str(get(cluster, namespace, "pod", "too-big")["status"]))
    assert pod["status"]["phase"] == "Pending" and "nodeName" not in pod["spec"]
    assert scheduled["reason"] == "Unschedulable"
    assert f"Insufficient {GPU_RESOURCE}" in scheduled["message"], scheduled["message"]
    events = cluster.kubectl("get", "events", "-n", namespace, "--field-selector",
                             "involvedObject.name=too-big,reason=FailedScheduling", "-o", "json").stdout
    assert any(f"Insufficient {GPU_RESOURCE}" in e["message"] for e in json.loads(events)["items"])


@pytest.mark.parametrize("exit_code,phase", [(0, "Succeeded"), (3, "Failed")])
def test_finish_pod_ends_a_running_pod(cluster, namespace, exit_code, phase):
    if not cluster.simulated:
        pytest.skip("finish_pod drives kwok's simulated pods")
    create(cluster, namespace, gpu_pod("worker", 1))
    cluster.kubectl("wait", "-n", namespace, "pod/worker", "--for=jsonpath={.status.phase}=Running",
                    "--timeout=60s")
    cluster.finish_pod(namespace, "worker", exit_code)
    pod = get(cluster, namespace, "pod", "worker")
    assert pod["status"]["phase"] == phase
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == exit_code
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == "False" and conditions["PodScheduled"] == "True"
