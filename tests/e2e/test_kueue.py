"""Kueue admits FineTuneJobs for real (tests/cluster/kueue.py: Kueue's manager, CRDs and webhooks beside the test
control plane; a ClusterQueue with an nvidia.com/gpu quota of one 8-GPU kwok node, or of both):

- a job beyond the quota waits, Pending/Queued, in Kueue's words and naming its queue, and is admitted when
  quota frees;
- a higher-priority job preempts a running one, which the operator reports as a preemption (Pending/Preempted, a
  Warning), not a failure: no restart counted, and it runs again when readmitted;
- runPolicy.suspend deactivates Kueue's Workload instead of writing the Job's spec.suspend, so the two never
  fight: the Job's spec.suspend, polled every 0.1 s, flips once per admission and eviction;
- three jobs on two nodes' quota: two run, the third waits Queued and runs when one of them ends.

Skipped when Kueue is not built (scripts/build-control-plane.sh kueue; make test builds it)."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import pytest

from .harness import cpu_job, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

GPUS = 8  # the ClusterQueue's quota: one kwok node


@pytest.fixture(scope="module")
def kueue(cluster, crd_installed, tmp_path_factory):
    from tests.cluster.kueue import Kueue

    k = Kueue(cluster, tmp_path_factory.mktemp("kueue"))
    k.start()
    yield k
    k.stop()


@contextlib.contextmanager
def queues(kc, ns: str, gpus: int = GPUS):
    """A ResourceFlavor, a ClusterQueue with `gpus` of nvidia.com/gpu quota for `ns`, its LocalQueue `team` and
    a PriorityClass; the jobs and these are deleted afterwards."""
    kc.apply([
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": f"gpu-{ns}"}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": f"gpus-{ns}"},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                  "preemption": {"withinClusterQueue": "LowerPriority"},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"], "flavors": [
                      {"name": f"gpu-{ns}", "resources": [{"name": "cpu", "nominalQuota": "100"},
                                                          {"name": "memory", "nominalQuota": "1000Gi"},
                                                          {"name": "nvidia.com/gpu", "nominalQuota": gpus}]}]}]}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team", "namespace": ns},
         "spec": {"clusterQueue": f"gpus-{ns}"}},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": f"urgent-{ns}"},
         "value": 1000, "description": "test_kueue's higher priority"},
    ])
    try:
        yield
    finally:
        kc("delete", "ftj", "--all", "-n", ns, "--timeout=120s", check=False, timeout=150)
        for kind, name in (("clusterqueue", f"gpus-{ns}"), ("resourceflavor", f"gpu-{ns}"),
                           ("priorityclass", f"urgent-{ns}")):
            kc("delete", kind, name, "--ignore-not-found", "--wait=false", check=False)


def gpu_job(name: str, priority: str | None = None) -> dict:
    doc = cpu_job(name, workers=2)
    doc["spec"]["resources"].update({"gpusPerWorker": GPUS // 2, "queueName": "team"})
    if priority:
        doc["spec"]["resources"]["priorityClassName"] = priority
    return doc


class SuspendFlips(threading.Thread):
    """Every value of a worker Job's spec.suspend, polled every 0.1 s (repeats folded; a flip and its undo
    inside one poll would be missed)."""

    def __init__(self, kc, ns: str, job: str):
        super().__init__(daemon=True)
        self.kc, self.ns, self.job, self.values, self.stop = kc, ns, job, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                got = self.kc.get_or_none("job", self.job, self.ns)
            except Exception:  # noqa: BLE001 - the namespace goes at the end; the test reads values, not errors
                got = None
            if got is not None:
                v = bool(got["spec"].get("suspend"))
                if not self.values or self.values[-1] != v:
                    self.values.append(v)
            time.sleep(0.1)

    @property
    def flips(self) -> int:
        return max(0, len(self.values) - 1)


def test_kueue_queues_preempts_and_never_fights_the_operator(kueue, operator, kc, cluster, namespace, gpus_free):
    ns = namespace
    with queues(kc, ns):
        kc.apply(gpu_job("first"), ns)
        kc.wait_phase("first", ns, "Running", 90)
        kc.apply(gpu_job("second"), ns)
        flips = SuspendFlips(kc, ns, "second-worker")
        flips.start()
        st = kc.wait_phase("second", ns, "Pending", 60, reason="Queued")
        wait_for("Kueue's reason in the message", lambda: "quota for nvidia.com/gpu" in kc.status("second", ns)["message"],
                 60, describe=lambda: kc.status("second", ns).get("message", ""))
        assert "(queue team)" in kc.status("second", ns)["message"]

        for pod in kc.pods("first", ns, running=True):  # the first job ends: its quota frees
            cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
        kc.wait_phase("first", ns, "Succeeded", 60)
        kc.wait_phase("second", ns, "Running", 90)

        # A higher-priority job preempts the second one: a preemption, not a failure.
        kc.apply(gpu_job("urgent", priority=f"urgent-{ns}"), ns)
        st = kc.wait_phase("second", ns, "Pending", 90, reason="Preempted")
        assert st["restarts"] == 0 and "preempted by Kueue" in st["message"]
        kc.wait_phase("urgent", ns, "Running", 90)
        events = {e["reason"]: e for e in kc.events("second", ns)}
        assert events["Preempted"]["type"] == "Warning" and "WorkerFailed" not in events
        for pod in kc.pods("urgent", ns, running=True):
            cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
        st = kc.wait_phase("second", ns, "Running", 90)
        assert st["restarts"] == 0

        # runPolicy.suspend under Kueue: the Workload is deactivated; the Job's suspend is Kueue's to write.
        kc("patch", "ftj", "second", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"runPolicy": {"suspend": True}}}))
        kc.wait_phase("second", ns, "Suspended", 60)
        wait_for("the workers to stop", lambda: not kc.pods("second", ns), 60)
        (wl,) = kc.get("workloads.kueue.x-k8s.io", "-n", ns, "-l",
                       f"kueue.x-k8s.io/job-uid={kc.get('job', 'second-worker', '-n', ns)['metadata']['uid']}")["items"]
        assert wl["spec"]["active"] is False
        kc("patch", "ftj", "second", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"runPolicy": {"suspend": False}}}))
        kc.wait_phase("second", ns, "Running", 90)
        time.sleep(5.0)  # would a fight show, it shows now
        flips.stop.set()
        flips.join(5)
        # created suspended; admitted; preempted; admitted; deactivated; admitted: each a single flip
        assert flips.values == [True, False, True, False, True, False], flips.values
        for pod in kc.pods("second", ns, running=True):
            cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
        st = kc.wait_phase("second", ns, "Succeeded", 60)
        assert (st["restarts"], st["disruptions"]) == (0, 0)


def test_three_jobs_share_two_nodes_quota_in_order(kueue, operator, kc, cluster, namespace, gpus_free):
    """Three 8-GPU jobs on a ClusterQueue with both kwok nodes' 16 GPUs: two run, the third waits Queued (what
    `kubectl get ftj` shows is printed) and runs when one of the two ends."""
    ns = namespace
    with queues(kc, ns, gpus=2 * GPUS):
        for name in ("a", "b"):  # one at a time: Kueue orders its queue by creation time (1 s resolution)
            kc.apply(gpu_job(name), ns)
            kc.wait_phase(name, ns, "Running", 90)
        kc.apply(gpu_job("c"), ns)
        kc.wait_phase("c", ns, "Pending", 60, reason="Queued")
        table = kc("get", "ftj", "-n", ns).stdout
        print(f"\n{table}")
        phases = {j["metadata"]["name"]: (j["status"]["phase"], j["status"].get("reason"))
                  for j in kc.get("ftj", "-n", ns)["items"]}
        assert phases == {"a": ("Running", "WorkersReady"), "b": ("Running", "WorkersReady"), "c": ("Pending", "Queued")}, phases
        row = kc.printed_row("c", ns)
        assert (row["PHASE"], row["REASON"]) == ("Pending", "Queued"), table  # the story, without -o wide
        for pod in kc.pods("a", ns, running=True):
            cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
        kc.wait_phase("a", ns, "Succeeded", 60)
        kc.wait_phase("c", ns, "Running", 90)
        print(kc("get", "ftj", "-n", ns).stdout)
