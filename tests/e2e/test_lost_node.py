"""A node dies under a running job (kubeflow/training-operator#2072): its workers stay Terminating forever, since
no kubelet is left to confirm they stopped. The operator force-deletes them once runPolicy.forceDeleteAfterSeconds
has passed, restarts the group as a disruption (not spending backoffLimit), and the job finishes on another node.

The dead node is a Node object no kwok manages: the test plays its kubelet until it "dies" (marks the pods
Running, then sets the node's Ready condition to Unknown, as the node lifecycle controller does when the kubelet
stops reporting), and evicts one worker the way the taint manager or a drain would (a pod deletion)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.cluster.nodes import KWOK_NODE_ANNOTATION, gpu_node

from .harness import cpu_job, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

POOL = "tuneguard.io/test-pool"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _node(kc, name: str, pool: str, managed: bool, ip: str) -> None:
    node = gpu_node(name, ip)
    node["metadata"]["labels"][POOL] = pool
    if not managed:
        del node["metadata"]["annotations"][KWOK_NODE_ANNOTATION]
    kc.apply(node)


def _set_ready(kc, node: str, status: str) -> None:
    now = _now()
    reason = "KubeletReady" if status == "True" else "NodeStatusUnknown"
    kc("patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps({"status": {"conditions": [
        {"type": "Ready", "status": status, "reason": reason, "message": "set by test_lost_node",
         "lastHeartbeatTime": now, "lastTransitionTime": now}]}}))


def _run_like_a_kubelet(kc, ns: str, pod: dict) -> None:
    now = _now()
    kc("patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"phase": "Running", "podIP": "10.9.9.9",
                    "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                                   for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                    "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                                           "restartCount": 0, "started": True,
                                           "state": {"running": {"startedAt": now}}}
                                          for c in pod["spec"]["containers"]]}}))


def test_workers_on_a_lost_node_are_force_deleted_and_the_group_restarts_elsewhere(operator, kc, cluster, namespace):
    ns = namespace
    dead, spare = f"lost-{ns}"[:63], f"spare-{ns}"[:63]
    _node(kc, dead, ns, managed=False, ip="10.0.9.1")
    try:
        _set_ready(kc, dead, "True")
        doc = cpu_job("lost", workers=2, backoffLimit=0, forceDeleteAfterSeconds=3)
        doc["spec"]["resources"]["nodeSelector"] = {POOL: ns}
        kc.apply(doc, ns)
        pods = wait_for("both workers bound to the node", lambda: (p := kc.pods("lost", ns)) and len(p) == 2
                        and all(x["spec"].get("nodeName") == dead for x in p) and p, 60)
        for pod in pods:
            _run_like_a_kubelet(kc, ns, pod)
        kc.wait_phase("lost", ns, "Running", 60)

        _set_ready(kc, dead, "Unknown")  # the kubelet is gone
        _node(kc, spare, ns, managed=True, ip="10.0.9.2")  # a replacement node joins (an autoscaler's)
        victim = sorted(p["metadata"]["name"] for p in pods)[1]
        kc("delete", "pod", victim, "-n", ns, "--grace-period=1", "--wait=false")  # evicted: stuck Terminating

        st = kc.wait_phase("lost", ns, "Running", 150, disruptions=1)
        assert (st["restarts"], st["reason"]) == (0, "WorkersReady")
        new = kc.pods("lost", ns, running=True)
        assert len(new) == 2 and {p["spec"]["nodeName"] for p in new} == {spare}
        assert all(p["metadata"]["labels"]["tuneguard.io/restart-attempt"] == "1" for p in new)
        events = kc.events("lost", ns)
        forced = sorted(e["message"] for e in events if e["reason"] == "PodForceDeleted")
        # the evicted worker, then (the group's foreground deletion) the other one, both on the dead node
        assert len(forced) == 2 and all(f"on node {dead} (Ready=Unknown)" in m for m in forced), forced
        (disrupted,) = [e for e in events if e["reason"] == "WorkerDisrupted"]
        assert f"{victim} on node {dead} (Ready=Unknown)" in disrupted["message"]
        assert "not counted against backoffLimit (disruption 1)" in disrupted["message"]
        assert f'tuneguard_operator_pods_force_deleted_total{{namespace="{ns}"}} 2.0' in operator.metrics()

        for pod in new:
            cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
        st = kc.wait_phase("lost", ns, "Succeeded", 60)
        assert (st["restarts"], st["disruptions"]) == (0, 1)
    finally:  # waited for: a GPU node left behind would take the next tests' pods
        kc("delete", "node", dead, spare, "--ignore-not-found", "--timeout=60s", check=False, timeout=90)
