"""100 FineTuneJobs applied at once: all reach Running. A measurement, not a timed assertion.

Figures (printed; written to docs/results/operator-scale.json only when TUNEGUARD_WRITE_RESULTS=1, so
that a test run never dirties the checkout):
- per job, from the FineTuneJob's creation to its first worker pod's creation (both as seen by watches
  in this test process), median and worst;
- from the start of `kubectl apply` to the last pod created, and to the last job Running;
- the operator's peak resident memory (VmHWM of the process).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time

import pytest
import yaml

from .harness import REPO, OperatorProcess, cpu_job, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

N_JOBS = int(os.environ.get("TUNEGUARD_SCALE_JOBS", "100"))
RESULTS = REPO / "docs" / "results" / "operator-scale.json"


class Watcher(threading.Thread):
    """Watches one collection and records when this process first sees each object, and when a
    predicate on it first holds. Plain HTTP watch (list, then watch from its resourceVersion)."""

    def __init__(self, cluster, path: str, label_selector: str, key, done=None):
        super().__init__(daemon=True)
        self.cluster, self.path, self.selector, self.key, self.done = cluster, path, label_selector, key, done
        self.first_seen: dict[str, float] = {}
        self.first_done: dict[str, float] = {}
        self.stop_flag = threading.Event()
        self.ready = threading.Event()

    def _request(self, client, query):
        method, url, headers, _, _ = client.param_serialize(
            "GET", self.path, query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        return client.rest_client.pool_manager.request(method, url, headers=headers, preload_content=False,
                                                       timeout=None)

    def _see(self, obj):
        k = self.key(obj)
        if k is None:
            return
        now = time.time()
        self.first_seen.setdefault(k, now)
        if self.done and k not in self.first_done and self.done(obj):
            self.first_done[k] = now

    def run(self):
        client = self.cluster.api_client()
        try:
            base = [("labelSelector", self.selector)] if self.selector else []
            listing = json.loads(self._request(client, base).read())
            for obj in listing["items"]:
                self._see(obj)
            rv = listing["metadata"]["resourceVersion"]
            self.ready.set()
            while not self.stop_flag.is_set():
                resp = self._request(client, base + [("watch", "true"), ("resourceVersion", rv),
                                                     ("timeoutSeconds", "20")])
                buf = b""
                for chunk in resp.stream(4096):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        ev = json.loads(line)
                        if ev["type"] == "ERROR":
                            raise RuntimeError(f"watch error: {ev}")
                        rv = ev["object"]["metadata"].get("resourceVersion", rv)
                        if ev["type"] in ("ADDED", "MODIFIED"):
                            self._see(ev["object"])
                    if self.stop_flag.is_set():
                        break
                resp.release_conn()
        finally:
            client.close()


def scale_jobs(ns: str, n: int) -> list[dict]:
    """n one-worker CPU jobs in namespace ns (shared with bench/operator_scale.py)."""
    docs = []
    for i in range(n):
        doc = cpu_job(f"scale-{i:03d}", workers=1)
        doc["metadata"]["namespace"] = ns
        docs.append(doc)
    return docs


def open_watches(cluster, ns: str, watcher=None) -> tuple:
    """Open, and wait for, the watches on ns's FineTuneJobs (done when Running), pods and worker Jobs
    (to split the latency into the operator's part and the Job controller's)."""
    watcher = watcher or Watcher
    by_job = lambda o: o["metadata"]["labels"].get("tuneguard.io/job")  # noqa: E731
    jobs_w = watcher(cluster, f"/apis/tuneguard.io/v1alpha1/namespaces/{ns}/finetunejobs", "",
                     key=lambda o: o["metadata"]["name"],
                     done=lambda o: (o.get("status") or {}).get("phase") == "Running")
    pods_w = watcher(cluster, f"/api/v1/namespaces/{ns}/pods", "tuneguard.io/job", key=by_job)
    batch_w = watcher(cluster, f"/apis/batch/v1/namespaces/{ns}/jobs", "tuneguard.io/job", key=by_job)
    for w in (jobs_w, pods_w, batch_w):
        w.start()
        if not w.ready.wait(30):
            raise TimeoutError(f"the watch on {w.path} did not open in 30 s")
    time.sleep(1.0)  # let every watch settle before anything is created
    return jobs_w, pods_w, batch_w


@pytest.fixture(scope="module")
def scale_operator(cluster, crd_installed, tmp_path_factory):
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator-scale"))
    op.start()
    yield op
    op.stop()


def test_hundred_jobs_reach_running(cluster, kc, scale_operator, module_namespace):
    ns = module_namespace
    docs = scale_jobs(ns, N_JOBS)
    names = [d["metadata"]["name"] for d in docs]
    jobs_w, pods_w, batch_w = open_watches(cluster, ns)
    _, rss_before = scale_operator.rss_kib()

    t_apply = time.time()
    manifest = yaml.safe_dump_all(docs)
    for attempt in range(3):
        # On a loaded machine the API server may answer a create with 504 Timeout ("may still be
        # processing the request"); apply is idempotent, so apply the whole set again.
        done = kc("apply", "-f", "-", input=manifest, timeout=300, check=False)
        if done.returncode == 0 or "Timeout" not in done.stderr or attempt == 2:
            break
    assert done.returncode == 0, done.stderr
    t_applied = time.time()

    peak = [0]

    def all_running():
        peak[0] = max(peak[0], scale_operator.rss_kib()[1])
        return len(jobs_w.first_done) >= N_JOBS

    wait_for(f"all {N_JOBS} FineTuneJobs Running", all_running, timeout=420, interval=1.0,
             describe=lambda: f"{len(jobs_w.first_done)} Running, {len(pods_w.first_seen)} with pods")
    for w in (jobs_w, pods_w, batch_w):
        w.stop_flag.set()
    _, peak_rss = scale_operator.rss_kib()
    peak_rss = max(peak_rss, peak[0])

    per_job = sorted(pods_w.first_seen[n] - jobs_w.first_seen[n] for n in names)
    operator_part = sorted(batch_w.first_seen[n] - jobs_w.first_seen[n] for n in names)
    job_controller_part = sorted(pods_w.first_seen[n] - batch_w.first_seen[n] for n in names)
    since_apply_pods = sorted(pods_w.first_seen[n] - t_apply for n in names)
    since_apply_running = sorted(jobs_w.first_done[n] - t_apply for n in names)
    metrics = scale_operator.metrics()
    def sample(prefix: str) -> float | None:
        return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(prefix)), None)

    errors = sample("tuneguard_operator_reconcile_errors_total")
    n_reconciles = sample("tuneguard_operator_reconcile_duration_seconds_count")
    reconcile_sum = sample("tuneguard_operator_reconcile_duration_seconds_sum")
    result = {
        "jobs": N_JOBS,
        "workers_per_job": 1,
        "apply_seconds": round(t_applied - t_apply, 2),
        "job_created_to_pod_created_seconds": {"median": round(statistics.median(per_job), 3),
                                               "p90": round(per_job[int(0.9 * (N_JOBS - 1))], 3),
                                               "worst": round(per_job[-1], 3)},
        "of_which_job_created_to_worker_job_created_seconds (operator)": {
            "median": round(statistics.median(operator_part), 3), "worst": round(operator_part[-1], 3)},
        "of_which_worker_job_created_to_pod_created_seconds (Job controller)": {
            "median": round(statistics.median(job_controller_part), 3), "worst": round(job_controller_part[-1], 3)},
        "apply_start_to_pod_created_seconds": {"median": round(statistics.median(since_apply_pods), 3),
                                               "worst": round(since_apply_pods[-1], 3)},
        "apply_start_to_running_seconds": {"median": round(statistics.median(since_apply_running), 3),
                                           "worst": round(since_apply_running[-1], 3)},
        "operator_rss_mib": {"before": round(rss_before / 1024, 1), "peak": round(peak_rss / 1024, 1)},
        "operator_reconcile_errors": errors,
        "operator_reconciles": n_reconciles,
        "operator_reconcile_mean_seconds": round(reconcile_sum / n_reconciles, 4) if n_reconciles else None,
        "operator_workers": int(os.environ.get("TUNEGUARD_OPERATOR_WORKERS", "8")),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "local control plane (kube-apiserver, controller-manager, scheduler, etcd) and kwok share "
                "the machine with the operator and this test; figures are wall-clock seconds",
    }
    print("\n" + json.dumps(result, indent=2))
    if os.environ.get("TUNEGUARD_WRITE_RESULTS") == "1":
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    kc("delete", "ftj", "--all", "-n", ns, "--wait=false")
    wait_for("the 100 jobs' pods to be garbage-collected",
             lambda: not kc.get("pods", "-n", ns, "-l", "tuneguard.io/job")["items"], 180, interval=2)
