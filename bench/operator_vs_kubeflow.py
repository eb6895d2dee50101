"""Tuneguard's operator side by side with Kubeflow's Training Operator, on one real control plane.

    PYTHONPATH=.:operator:trainer_image python bench/operator_vs_kubeflow.py [--jobs 200] [--out docs/results]

The same local control plane (tests/cluster: kube-apiserver with its audit log on, controller-manager,
scheduler, etcd, kwok GPU nodes) runs one operator at a time, each in a fresh namespace, and gets N jobs of two
pods each created the same way (16 client threads through the Python client's CustomObjectsApi):

- ``tuneguard``: N FineTuneJobs with 2 workers (one Indexed Job of 2 pods each), `tuneguard operator` as
  tests/e2e runs it (8 reconcile workers), and again with its watch cache off (``tuneguard-no-cache``);
- ``kubeflow``: N PyTorchJobs with Master 1 + Worker 1, Kubeflow's `training-operator` v1.8.1 (built by
  scripts/build-control-plane.sh from its Go module, CRDs generated from its types) as its manifests deploy it
  (`--controller-threads 1`, the default), and again with `--controller-threads 8` to match ours.

Figures per round: from each job's creation to its first pod and to all its pods (median, p99; times are when
this process's watches see the objects), API requests per job (the API server's audit log, counted by the
operator's user agent over the round), the operator's CPU seconds and peak RSS. The table gives Tuneguard's
figures as ratios of Kubeflow's.

Kubeflow's validating webhook: its certificate controller does not start the controllers until a
ValidatingWebhookConfiguration of its name exists and has its CA injected, and its certificates appear in its
cert directory (in a pod, the Secret's volume). The benchmark writes that file as a kubelet would and registers
the webhook scoped to no object, since the API server here cannot reach a Service: Kubeflow's admission call is
left out, which favours Kubeflow.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, markdown_table, median, out_dir, percentile, write_result
from bench.operator_scale import install_crd, new_namespace, proc_cpu_seconds
from tests.cluster.processes import free_port, http_ok

KUBEFLOW_NS = "kubeflow"
KUBEFLOW_JOB_LABEL = "training.kubeflow.org/job-name"
TUNEGUARD_JOB_LABEL = "tuneguard.io/job"
# Where the training operator's cert controller looks for its certificates (hard-coded in pkg/cert).
KUBEFLOW_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
PODS_PER_JOB = 2
USER_AGENTS = {"tuneguard": ("tuneguard-operator", "kopf/"), "kubeflow": ("training-operator/",)}


def rss_kib(pid: int) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


# ------------------------------------------------------------------------------------------------- jobs


def tuneguard_jobs(ns: str, n: int) -> list[dict]:
    from tests.e2e.harness import cpu_job

    docs = []
    for i in range(n):
        doc = cpu_job(f"job-{i:03d}", workers=PODS_PER_JOB)
        doc["metadata"]["namespace"] = ns
        docs.append(doc)
    return docs


def pytorch_jobs(ns: str, n: int) -> list[dict]:
    """PyTorchJobs with the same pod count and resources as tuneguard_jobs (Master 1 + Worker 1)."""
    def replica(count: int) -> dict:
        res = {"cpu": "100m", "memory": "128Mi"}
        return {"replicas": count, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [
            {"name": "pytorch", "image": "ghcr.io/tuneguard/trainer:0.1.0",
             "resources": {"requests": res, "limits": res}}]}}}

    return [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
             "metadata": {"name": f"job-{i:03d}", "namespace": ns},
             "spec": {"pytorchReplicaSpecs": {"Master": replica(1), "Worker": replica(PODS_PER_JOB - 1)}}}
            for i in range(n)]


# -------------------------------------------------------------------------------------------- operators


class KubeflowOperator:
    """Kubeflow's training-operator binary against the cluster, PyTorchJob only."""

    def __init__(self, cluster, binary: Path, log_dir: Path, threads: int):
        self.cluster, self.binary, self.threads = cluster, binary, threads
        self.log = log_dir / f"training-operator-{threads}.log"
        self.metrics_port, self.health_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    def install(self, crd_dir: Path) -> None:
        kc = self.cluster.kubectl
        kc("apply", "--server-side", "-f", str(crd_dir / "kubeflow.org_pytorchjobs.yaml"))
        kc("create", "namespace", KUBEFLOW_NS, check=False)
        kc("create", "secret", "generic", "training-operator-webhook-cert", "-n", KUBEFLOW_NS, check=False)
        vwc = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
               "metadata": {"name": "validator.training-operator.kubeflow.org"},
               "webhooks": [{"name": "validator.pytorchjob.training-operator.kubeflow.org",
                             "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Ignore",
                             "objectSelector": {"matchLabels": {"tuneguard.io/bench-never-matches": "true"}},
                             "clientConfig": {"service": {"name": "training-operator", "namespace": KUBEFLOW_NS,
                                                          "path": "/validate-kubeflow-org-v1-pytorchjob"}},
                             "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                                        "operations": ["CREATE", "UPDATE"], "resources": ["pytorchjobs"]}]}]}
        kc("apply", "-f", "-", input=json.dumps(vwc))

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), "MY_POD_NAMESPACE": KUBEFLOW_NS}
        self.proc = subprocess.Popen(
            [str(self.binary), "--enable-scheme=pytorchjob", f"--controller-threads={self.threads}",
             f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
             f"--health-probe-bind-address=127.0.0.1:{self.health_port}", f"--webhook-server-port={free_port()}"],
            env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"training-operator did not become ready; see {self.log}")
            self._mount_certs()
            time.sleep(1)

    def _mount_certs(self) -> None:
        """What the kubelet's Secret volume does in a pod: the cert controller's Secret as files."""
        out = self.cluster.kubectl("get", "secret", "training-operator-webhook-cert", "-n", KUBEFLOW_NS,
                                   "-o", "json", check=False).stdout
        data = (json.loads(out).get("data") or {}) if out else {}
        if {"tls.crt", "tls.key", "ca.crt"} <= set(data) and not (KUBEFLOW_CERT_DIR / "tls.crt").exists():
            KUBEFLOW_CERT_DIR.mkdir(parents=True, exist_ok=True)
            for name in ("tls.crt", "tls.key", "ca.crt"):
                (KUBEFLOW_CERT_DIR / name).write_bytes(base64.b64decode(data[name]))

    def _ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.health_port}/readyz")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------------------------------- a round


def audit_requests(log: Path, offset: int, agents: tuple[str, ...], t0: float, t1: float) -> dict[str, int]:
    """Requests by verb in the audit log (from byte offset) made by a user agent starting with one of `agents`,
    received in [t0, t1]."""
    from datetime import datetime

    counts: dict[str, int] = {}
    with log.open("rb") as f:
        f.seek(offset)
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("stage") not in ("ResponseComplete", "ResponseStarted", "Panic"):
                continue
            if ev.get("stage") == "ResponseComplete" and ev.get("verb") == "watch":
                continue  # a watch logs ResponseStarted then ResponseComplete: count it once
            if not (ev.get("userAgent") or "").startswith(agents):
                continue
            t = datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
            if t0 <= t <= t1:
                counts[ev["verb"]] = counts.get(ev["verb"], 0) + 1
    return counts


def one_round(cluster, audit_log: Path, label: str, kind: str, pid: int, n: int, threads: int,
              timeout: float, log) -> dict:
    from kubernetes import client as k8s

    from tests.e2e.test_operator_scale import Watcher

    ns = new_namespace(cluster, f"vs-{label}-{int(time.time()) % 100000}")
    if kind == "tuneguard":
        docs, group, version, plural, key_label = tuneguard_jobs(ns, n), "tuneguard.io", "v1alpha1", \
            "finetunejobs", TUNEGUARD_JOB_LABEL
    else:
        docs, group, version, plural, key_label = pytorch_jobs(ns, n), "kubeflow.org", "v1", "pytorchjobs", \
            KUBEFLOW_JOB_LABEL
    pods_of: dict[str, set[str]] = {}
    all_pods_at: dict[str, float] = {}

    class PodWatcher(Watcher):
        def _see(self, obj):
            super()._see(obj)
            job = (obj["metadata"].get("labels") or {}).get(key_label)
            if job is not None:
                pods_of.setdefault(job, set()).add(obj["metadata"]["name"])
                if len(pods_of[job]) >= PODS_PER_JOB:
                    all_pods_at.setdefault(job, time.time())

    jobs_w = Watcher(cluster, f"/apis/{group}/{version}/namespaces/{ns}/{plural}", "",
                     key=lambda o: o["metadata"]["name"])
    pods_w = PodWatcher(cluster, f"/api/v1/namespaces/{ns}/pods", key_label,
                        key=lambda o: (o["metadata"].get("labels") or {}).get(key_label))
    watches = [jobs_w, pods_w]
    if kind == "tuneguard":  # the worker Jobs: splits the latency into the operator's part and the Job controller's
        batch_w = Watcher(cluster, f"/apis/batch/v1/namespaces/{ns}/jobs", key_label,
                          key=lambda o: (o["metadata"].get("labels") or {}).get(key_label))
        watches.append(batch_w)
    for w in watches:
        w.start()
        if not w.ready.wait(30):
            raise TimeoutError(f"the watch on {w.path} did not open in 30 s")
    time.sleep(1.0)
    audit_offset = audit_log.stat().st_size
    server0 = apiserver_latency(cluster)
    cpu0 = proc_cpu_seconds(pid)
    api_client = cluster.api_client()
    api = k8s.CustomObjectsApi(api_client)
    t_start = time.time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda d: api.create_namespaced_custom_object(group, version, ns, plural, d), docs))
    t_client = time.time() - t_start
    api_client.close()
    log(f"{label}: {n} created in {t_client:.1f} s; waiting for {n * PODS_PER_JOB} pods")
    peak, deadline = 0, time.monotonic() + timeout
    while len(all_pods_at) < n and time.monotonic() < deadline:
        peak = max(peak, rss_kib(pid)[1])
        time.sleep(0.5)
    time.sleep(3.0)  # let the operator finish what the last pods set off (status writes), inside the window
    t_end = time.time()
    cpu = proc_cpu_seconds(pid) - cpu0
    peak = max(peak, rss_kib(pid)[1])
    server = apiserver_latency(cluster, since=server0)
    for w in watches:
        w.stop_flag.set()
    time.sleep(2.0)  # the audit log is written in batches
    requests = audit_requests(audit_log, audit_offset, USER_AGENTS[kind], t_start, t_end)
    names = [d["metadata"]["name"] for d in docs]
    first = sorted(pods_w.first_seen[x] - jobs_w.first_seen[x] for x in names
                   if x in pods_w.first_seen and x in jobs_w.first_seen)
    every = sorted(all_pods_at[x] - jobs_w.first_seen[x] for x in names if x in all_pods_at and x in jobs_w.first_seen)

    def dist(v):
        return {"median": _r(median(v)), "p99": _r(percentile(v, 99)), "max": _r(max(v) if v else None)}

    split = {}
    if kind == "tuneguard":
        b = batch_w.first_seen
        split = {"of_which_operator_seconds (job -> worker Job)": dist(sorted(
                     b[x] - jobs_w.first_seen[x] for x in names if x in b and x in jobs_w.first_seen)),
                 "of_which_job_controller_seconds (worker Job -> all pods)": dist(sorted(
                     all_pods_at[x] - b[x] for x in names if x in b and x in all_pods_at))}
    res = {
        "operator": label, "namespace": ns, "jobs": n, "pods_per_job": PODS_PER_JOB,
        "jobs_with_all_pods": len(every), "complete": len(every) == n,
        "client_seconds": round(t_client, 3),
        "job_to_first_pod_seconds": dist(first), "job_to_all_pods_seconds": dist(every),
        **split,
        "start_to_last_pod_seconds": _r(max(all_pods_at.values()) - t_start if all_pods_at else None),
        "api_requests": sum(requests.values()), "api_requests_by_verb": requests,
        "apiserver_mean_seconds_by_verb (all clients)": server,
        "api_requests_per_job": _r(sum(requests.values()) / n, 2),
        "operator_cpu_seconds": round(cpu, 2), "operator_peak_rss_mib": round(peak / 1024, 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    log(f"{label}: {len(every)}/{n} jobs with all pods; job->all pods median {res['job_to_all_pods_seconds']['median']}"
        f" s p99 {res['job_to_all_pods_seconds']['p99']} s; {res['api_requests_per_job']} requests/job; "
        f"CPU {res['operator_cpu_seconds']} s; peak RSS {res['operator_peak_rss_mib']} MiB")
    # The jobs first: the namespace controller deletes pods before anything else and waits for them, but kwok's
    # pods never reach a terminal phase, so a Job with a podFailurePolicy keeps their job-tracking finalizer until
    # the Job itself goes.
    cluster.kubectl("delete", plural, "--all", "-n", ns, "--wait=true", "--timeout=300s", check=False, timeout=330)
    cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=300s", check=False, timeout=330)
    return res


def _r(x, d: int = 3):
    return None if x is None else round(x, d)


def apiserver_latency(cluster, since: dict | None = None) -> dict:
    """The API server's own mean request duration by verb (all clients; its /metrics), since an earlier reading
    (whose raw sums and counts come back under "_raw")."""
    raw: dict[str, list[float]] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        for kind in ("sum", "count"):
            if line.startswith(f"apiserver_request_duration_seconds_{kind}{{"):
                verb = line.split('verb="', 1)[1].split('"', 1)[0]
                if verb in ("WATCH", "CONNECT"):
                    continue
                acc = raw.setdefault(verb, [0.0, 0.0])
                acc[0 if kind == "sum" else 1] += float(line.split()[-1])
    if since is None:
        return {"_raw": raw}
    out = {}
    for verb, (total, count) in raw.items():
        t0, c0 = since["_raw"].get(verb, [0.0, 0.0])
        if count - c0 >= 1:
            out[verb] = {"requests": int(count - c0), "mean_seconds": round((total - t0) / (count - c0), 4)}
    return out


# ------------------------------------------------------------------------------------------------ report


def ratio(a, b):
    return None if a is None or not b else round(a / b, 2)


def markdown(r: dict) -> str:
    rows = []
    for x in r["rounds"]:
        f, a = x["job_to_first_pod_seconds"], x["job_to_all_pods_seconds"]
        rows.append([x["operator"], f"{x['jobs_with_all_pods']}/{x['jobs']}", f["median"], f["p99"], a["median"],
                     a["p99"], x["api_requests_per_job"], x["operator_cpu_seconds"], x["operator_peak_rss_mib"]])
    by = {x["operator"]: x for x in r["rounds"]}
    ours = by.get("tuneguard")
    ratio_rows = []
    for label, theirs in by.items():
        if label == "tuneguard" or ours is None:
            continue
        ratio_rows.append([f"tuneguard / {label}",
                           ratio(ours["job_to_first_pod_seconds"]["median"], theirs["job_to_first_pod_seconds"]["median"]),
                           ratio(ours["job_to_first_pod_seconds"]["p99"], theirs["job_to_first_pod_seconds"]["p99"]),
                           ratio(ours["job_to_all_pods_seconds"]["median"], theirs["job_to_all_pods_seconds"]["median"]),
                           ratio(ours["job_to_all_pods_seconds"]["p99"], theirs["job_to_all_pods_seconds"]["p99"]),
                           ratio(ours["api_requests_per_job"], theirs["api_requests_per_job"]),
                           ratio(ours["operator_cpu_seconds"], theirs["operator_cpu_seconds"]),
                           ratio(ours["operator_peak_rss_mib"], theirs["operator_peak_rss_mib"])])
    m = r["machine"]
    head = ["first pod median s", "first pod p99 s", "all pods median s", "all pods p99 s", "API requests/job",
            "operator CPU s", "operator peak RSS MiB"]
    verbs = "; ".join(f"{x['operator']}: " + ", ".join(f"{k} {v}" for k, v in sorted(x["api_requests_by_verb"].items()))
                      for x in r["rounds"])
    return "\n".join([
        f"# Tuneguard's operator and Kubeflow's Training Operator: {r['jobs']} jobs of {PODS_PER_JOB} pods each",
        "",
        f"One real control plane (tests/cluster: kube-apiserver with its audit log, controller-manager, scheduler, "
        f"etcd, kwok with {r['gpu_nodes']} simulated GPU nodes), one operator at a time, each in a fresh namespace; "
        f"{r['jobs']} jobs created by {r['threads']} client threads through the Python client; all on one machine "
        f"with {m['cpus']} CPUs (load average {m['load_average_1m']} at the start). Kubeflow {r['kubeflow_version']} "
        "runs as its manifests deploy it (1 controller thread) and with 8 threads (Tuneguard's reconcile workers).",
        "", markdown_table(["operator", "jobs with all pods", *head], rows), "",
        markdown_table(["ratio", *head], ratio_rows), "",
        "Times run from each job's creation to its first pod, and to all its pods, as this process's watches see "
        "them. API requests are the operator's own (the audit log, by user agent: `tuneguard-operator` and "
        f"`kopf/` for Tuneguard, `training-operator/` for Kubeflow) over the round, per job. By verb: {verbs}.", "",
        *where_the_time_goes(by.get("tuneguard")),
        "Kubeflow's validating webhook is registered scoped to no object (the API server here cannot reach a "
        "Service), so its admission call is not in Kubeflow's figures; Tuneguard validates in the API server "
        "(CEL), which is in its figures.", "",
        f"Reproduce: `{r['command']}`", ""])


def where_the_time_goes(x: dict | None) -> list[str]:
    if not x:
        return []
    op, jc = x["of_which_operator_seconds (job -> worker Job)"], x["of_which_job_controller_seconds (worker Job -> all pods)"]
    server = ", ".join(f"{verb} {v['mean_seconds'] * 1000:.0f} ms" for verb, v in
                       sorted(x["apiserver_mean_seconds_by_verb (all clients)"].items()) if v["requests"] >= 50)
    return [f"Where Tuneguard's time goes: from the FineTuneJob to its worker Job (the operator) median {op['median']} s, "
            f"p99 {op['p99']} s; from the worker Job to all its pods (the Job controller) median {jc['median']} s, p99 "
            f"{jc['p99']} s. The API server's mean latency over the round, all clients: {server}.", ""]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=16, help="client threads creating the jobs")
    ap.add_argument("--kubeflow-threads", default="1,8", help="--controller-threads of Kubeflow's rounds")
    ap.add_argument("--watch-cache", default="on,off",
                    help="Tuneguard's rounds: with its watch cache (on), without (off: every reconcile GETs)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for a round's pods")
    ap.add_argument("--out", help="results directory (default $OUT or docs/results/)")
    ap.add_argument("--device", default="cpu", help="ignored (the operators never use an accelerator)")
    args = ap.parse_args(argv)
    out = out_dir(args.out)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from tests.cluster import LocalControlPlane
    from tests.cluster.binaries import control_plane_binaries
    from tests.e2e.harness import OperatorProcess

    kubeflow_bin = control_plane_binaries(["training-operator"])["training-operator"]
    gpu_nodes = max(2, -(-PODS_PER_JOB * args.jobs // 100))  # 110 pods per kwok node
    machine = machine_info("cpu")
    state = Path(tempfile.mkdtemp(prefix="tuneguard-vs-kubeflow-"))
    plane = LocalControlPlane(state, die_with_parent=True, gpu_nodes=gpu_nodes, audit=True)
    t0 = time.time()
    cluster = plane.start()
    log(f"control plane up in {time.time() - t0:.1f} s ({gpu_nodes} kwok GPU nodes, audit log {plane.audit_log})")
    certs_were_there = KUBEFLOW_CERT_DIR.exists()
    rounds = []
    try:
        install_crd(cluster)
        for cached in [v == "on" for v in args.watch_cache.split(",") if v]:
            os.environ["TUNEGUARD_OPERATOR_WATCH_CACHE"] = "1" if cached else "0"  # OperatorProcess passes it on
            op = OperatorProcess(cluster, state)
            op.start()
            try:
                rounds.append(one_round(cluster, plane.audit_log, "tuneguard" if cached else "tuneguard-no-cache",
                                        "tuneguard", op.proc.pid, args.jobs, args.threads, args.timeout, log))
            finally:
                op.stop()
        for threads in [int(t) for t in args.kubeflow_threads.split(",") if t]:
            kf = KubeflowOperator(cluster, kubeflow_bin, state, threads)
            kf.install(kubeflow_bin.parent / "crds")
            kf.start()
            try:
                rounds.append(one_round(cluster, plane.audit_log, f"kubeflow-{threads}-thread"
                                        + ("s" if threads > 1 else ""), "kubeflow", kf.proc.pid, args.jobs,
                                        args.threads, args.timeout, log))
            finally:
                kf.stop()
        result = {"jobs": args.jobs, "pods_per_job": PODS_PER_JOB, "gpu_nodes": gpu_nodes, "threads": args.threads,
                  "kubeflow_version": kubeflow_bin.parent.name.rsplit("-", 1)[-1], "rounds": rounds,
                  "machine": machine, "wall_seconds": round(time.time() - t0, 1),
                  "command": " ".join(["python", "bench/operator_vs_kubeflow.py"]
                                      + (argv if argv is not None else sys.argv[1:]))}
        log(f"wrote {write_result(out, f'operator-vs-kubeflow-{args.jobs}', result, markdown(result))}")
    finally:
        plane.stop()
        if not certs_were_there:
            shutil.rmtree(KUBEFLOW_CERT_DIR.parent, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
