"""Our kwok stages with the real kube-controller-manager: the Job controller runs an Indexed Job's pods,
and a pod finished through kwok succeeds or fails the Job. (That deleting a FineTuneJob removes its
children is tests/e2e/test_operator.py::test_delete_removes_children, with the operator's real children.)"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.cluster.polling import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180, func_only=True)]


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def test_indexed_job_pods_run_and_succeed(cluster, namespace):
    if not cluster.simulated:
        pytest.skip("finishes pods through kwok")
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "workers"},
        "spec": {
            "completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "trainer", "image": "tuneguard/trainer:test",
                                "resources": {"limits": {"nvidia.com/gpu": "8"}}}],
            }},
        },
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))

    def running_pods():
        pods = get_json(cluster, "pods", "-n", namespace, "-l", "job-name=workers")["items"]
        return pods if len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods) else None

    pods = wait_for("both workers Running", running_pods)
    indexes = sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods)
    assert indexes == ["0", "1"]
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "Job" for p in pods)
    # 8 GPUs each: the scheduler had to use both GPU nodes.
    assert len({p["spec"]["nodeName"] for p in pods}) == 2

    for pod in pods:
        cluster.finish_pod(namespace, pod["metadata"]["name"], 0)
    cluster.kubectl("wait", "-n", namespace, "job/workers", "--for=condition=Complete", "--timeout=60s")
    status = get_json(cluster, "job", "workers", "-n", namespace)["status"]
    assert status["succeeded"] == 2 and status["completedIndexes"] == "0,1"


def test_failed_pod_fails_the_job(cluster, namespace):
    if not cluster.simulated:
        pytest.skip("finishes pods through kwok")
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "doomed"},
        "spec": {"completionMode": "Indexed", "completions": 1, "backoffLimit": 0,
                 "template": {"spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "trainer", "image": "tuneguard/trainer:test"}]}}},
    }
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))
    pod = wait_for("the worker Running", lambda: next(
        (p for p in get_json(cluster, "pods", "-n", namespace, "-l", "job-name=doomed")["items"]
         if p["status"].get("phase") == "Running"), None))
    cluster.finish_pod(namespace, pod["metadata"]["name"], 1)
    cluster.kubectl("wait", "-n", namespace, "job/doomed", "--for=condition=Failed", "--timeout=60s")
