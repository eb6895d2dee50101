"""The real kube-controller-manager at work: the Job controller runs an Indexed Job's pods (finished
through kwok), and the garbage collector deletes what names a deleted owner."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.bad_manifests import valid_job
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


def test_garbage_collector_deletes_what_a_finetunejob_owns(cluster, crd_installed, namespace):
    """The operator's cleanup relies on this: its Job and ConfigMap name the FineTuneJob as owner."""
    owner = valid_job("owner")
    cluster.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=yaml.safe_dump(owner))
    uid = get_json(cluster, "finetunejob", "owner", "-n", namespace)["metadata"]["uid"]
    ref = {"apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob", "name": "owner", "uid": uid,
           "controller": True, "blockOwnerDeletion": True}
    dependents = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner-config", "ownerReferences": [ref]}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "owner-workers", "ownerReferences": [ref]},
         "spec": {"template": {"spec": {"restartPolicy": "Never",
                                        "containers": [{"name": "trainer", "image": "tuneguard/trainer:test"}]}}}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bystander"}},
    ]
    for doc in dependents:
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))
    wait_for("the Job's pod", lambda: get_json(cluster, "pods", "-n", namespace, "-l", "job-name=owner-workers")["items"])

    cluster.kubectl("delete", "finetunejob", "owner", "-n", namespace)

    def left() -> set[str]:
        return {f"{o['kind']}/{o['metadata']['name']}"
                for o in get_json(cluster, "configmaps,jobs,pods", "-n", namespace)["items"]
                if o["metadata"]["name"] != "kube-root-ca.crt"}

    # The garbage collector learns of a kind installed after it started on its next discovery pass
    # (every 30 s); until then it retries the dependents with back-off. Right after the CRD is
    # installed this takes up to ~45 s here; an operator installed long after its CRD sees none of it.
    wait_for("the FineTuneJob's dependents (and the Job's pod) to be garbage-collected",
             lambda: left() == {"ConfigMap/bystander"}, timeout=120)
