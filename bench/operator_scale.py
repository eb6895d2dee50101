"""The operator at scale on the real control plane: N FineTuneJobs (default 200) created at once.

    PYTHONPATH=.:operator:trainer_image python bench/operator_scale.py [--jobs 200] [--out docs/results]

Starts the local control plane of tests/cluster (kube-apiserver, controller-manager, scheduler, etcd, kwok
GPU nodes; or uses $KUBECONFIG's cluster) and a real `tuneguard operator` subprocess (tests/e2e/harness.py),
then, in two rounds in fresh namespaces:

- ``apply``: ``kubectl apply --server-side`` of ONE multi-document file holding all N jobs;
- ``create``: N parallel creates through the Python client (a thread pool), so the client's time is
  separated from the operator's.

Per round: client time (start to last create acknowledged); from the start to each job's first worker pod
(median, p99, max), from each job's own creation to its pod (the operator + Job controller's part, split
at the worker Job's creation); from the start to all jobs Running; the operator's reconcile errors and
reconciles (deltas of its /metrics counters), CPU seconds (utime + stime from /proc/PID/stat, delta) and
peak RSS (VmHWM). Times are when this process's watches see the objects. The control plane, kwok, the
operator and this script share the machine; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from bench.common import REPO, machine_info, markdown_table, median, out_dir, percentile, write_result

CRD_PATH = REPO / "crds" / "tuneguard.io_finetunejobs.yaml"


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)


def metric(text: str, name: str) -> float:
    """Sum of a metric's samples (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total += float(line.split()[-1])
    return total


def start_cluster(gpu_nodes: int):
    from tests.cluster import Cluster, LocalControlPlane
    from tests.cluster.binaries import control_plane_binaries, kubectl_binary

    if os.environ.get("KUBECONFIG"):
        try:
            tools = control_plane_binaries(["helm"])
        except RuntimeError:
            tools = {"kubectl": kubectl_binary()}
        return Cluster.from_kubeconfig(Path(os.environ["KUBECONFIG"]), tools), None
    state = Path(tempfile.mkdtemp(prefix="tuneguard-cluster-bench-"))
    plane = LocalControlPlane(state, die_with_parent=True, gpu_nodes=gpu_nodes)
    return plane.start(), plane


def install_crd(cluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    jp = '{.status.conditions[?(@.type=="Established")].status}'
    deadline = time.monotonic() + 60
    while cluster.kubectl("get", "crd", "finetunejobs.tuneguard.io", "-o", f"jsonpath={jp}",
                          check=False).stdout.strip() != "True":
        if time.monotonic() > deadline:
            raise TimeoutError("CRD not Established after 60 s")
        time.sleep(0.2)


def new_namespace(cluster, name: str) -> str:
    cluster.kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while not cluster.kubectl("get", "serviceaccount", "default", "-n", name, "--ignore-not-found",
                              "-o", "name").stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default ServiceAccount in {name}")
        time.sleep(0.2)
    return name


def _watcher_class():
    from tests.e2e.test_operator_scale import Watcher

    class QuietWatcher(Watcher):
        """The e2e test's watcher; a watch cut off after the round (stop_flag set) is not an error."""

        error = None

        def run(self):
            try:
                super().run()
            except Exception as e:  # noqa: BLE001
                if not self.stop_flag.is_set():
                    self.error = e
                    print(f"watch {self.path} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

    return QuietWatcher


def one_round(cluster, op, mode: str, n: int, threads: int, timeout: float, log) -> dict:
    from kubernetes import client as k8s

    Watcher = _watcher_class()

    from tests.e2e.test_operator_scale import open_watches, scale_jobs

    ns = new_namespace(cluster, f"scale-{mode}-{int(time.time()) % 100000}")
    docs = scale_jobs(ns, n)
    names = [d["metadata"]["name"] for d in docs]
    jobs_w, pods_w, batch_w = open_watches(cluster, ns, watcher=Watcher)
    m0 = op.metrics()
    cpu0 = proc_cpu_seconds(op.proc.pid)
    create_lat: list[float] = []
    t_start = time.time()
    if mode == "apply":
        text = yaml.safe_dump_all(docs)
        cluster.kubectl("apply", "--server-side", "-f", "-", input=text, timeout=600)
    else:
        api_client = cluster.api_client()
        api = k8s.CustomObjectsApi(api_client)

        def create(doc):
            t = time.time()
            api.create_namespaced_custom_object("tuneguard.io", "v1alpha1", ns, "finetunejobs", doc)
            return time.time() - t

        with ThreadPoolExecutor(threads) as pool:
            create_lat = list(pool.map(create, docs))
        api_client.close()
    t_client = time.time() - t_start
    log(f"{mode}: client done in {t_client:.1f} s; waiting for {n} pods")

    peak = [0]

    def poll():
        peak[0] = max(peak[0], op.rss_kib()[1])
        return len(pods_w.first_seen) >= n and len(jobs_w.first_done) >= n

    deadline = time.monotonic() + timeout
    last = -1
    while not poll():
        if time.monotonic() > deadline:
            break
        if len(pods_w.first_seen) != last and len(pods_w.first_seen) % 50 == 0:
            last = len(pods_w.first_seen)
        time.sleep(0.5)
    for w in (jobs_w, pods_w, batch_w):
        w.stop_flag.set()
    cpu1 = proc_cpu_seconds(op.proc.pid)
    m1 = op.metrics()
    _, hwm = op.rss_kib()
    got = [x for x in names if x in pods_w.first_seen]
    since_start = sorted(pods_w.first_seen[x] - t_start for x in got)
    running = sorted(jobs_w.first_done[x] - t_start for x in names if x in jobs_w.first_done)
    own = sorted(pods_w.first_seen[x] - jobs_w.first_seen[x] for x in got if x in jobs_w.first_seen)
    op_part = sorted(batch_w.first_seen[x] - jobs_w.first_seen[x] for x in names
                     if x in batch_w.first_seen and x in jobs_w.first_seen)
    jc_part = sorted(pods_w.first_seen[x] - batch_w.first_seen[x] for x in got if x in batch_w.first_seen)

    def dist(v):
        return {"median": _r(median(v)), "p99": _r(percentile(v, 99)), "max": _r(max(v) if v else None)}

    errors = metric(m1, "tuneguard_operator_reconcile_errors_total") - metric(m0, "tuneguard_operator_reconcile_errors_total")
    recs = metric(m1, "tuneguard_operator_reconcile_duration_seconds_count") - metric(m0, "tuneguard_operator_reconcile_duration_seconds_count")
    rsum = metric(m1, "tuneguard_operator_reconcile_duration_seconds_sum") - metric(m0, "tuneguard_operator_reconcile_duration_seconds_sum")
    res = {
        "mode": mode, "namespace": ns, "jobs": n, "pods_created": len(got), "jobs_running": len(running),
        "complete": len(got) == n and len(running) == n,
        "client_seconds": round(t_client, 3),
        "client_create_latency_seconds": dist(create_lat) if create_lat else None,
        "client_threads": threads if mode == "create" else None,
        "start_to_pod_created_seconds": dist(since_start),
        "start_to_all_pods_created_seconds": _r(since_start[-1] if since_start else None),
        "start_to_all_running_seconds": _r(running[-1] if len(running) == n else None),
        "job_created_to_pod_created_seconds": dist(own),
        "of_which_operator_seconds (job created -> worker Job created)": dist(op_part),
        "of_which_job_controller_seconds (worker Job -> pod)": dist(jc_part),
        "operator_reconcile_errors": errors, "operator_reconciles": recs,
        "operator_reconcile_mean_seconds": _r(rsum / recs if recs else None, 4),
        "operator_cpu_seconds": round(cpu1 - cpu0, 2),
        "operator_peak_rss_mib": round(max(hwm, peak[0]) / 1024, 1),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    log(f"{mode}: {len(got)}/{n} pods, start->pod median {res['start_to_pod_created_seconds']['median']} s "
        f"p99 {res['start_to_pod_created_seconds']['p99']} s; errors {errors:g}; operator CPU {res['operator_cpu_seconds']} s")
    return res


def _r(x, d: int = 3):
    return None if x is None else round(x, d)


def cleanup(cluster, ns: str, log) -> None:
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    log(f"deleting namespace {ns} (in the background)")


def markdown(r: dict) -> str:
    rows = []
    for x in r["rounds"]:
        s, o = x["start_to_pod_created_seconds"], x["job_created_to_pod_created_seconds"]
        rows.append([x["mode"], f"{x['pods_created']}/{x['jobs']}", x["client_seconds"], s["median"], s["p99"],
                     x["start_to_all_pods_created_seconds"], o["median"], o["p99"],
                     x["operator_reconcile_errors"], x["operator_cpu_seconds"], x["operator_peak_rss_mib"]])
    m = r["machine"]
    return "\n".join([
        f"# Operator at scale: {r['jobs']} FineTuneJobs at once", "",
        f"Real control plane (tests/cluster: kube-apiserver, controller-manager, scheduler, etcd, kwok with "
        f"{r['gpu_nodes']} simulated GPU nodes) and a real `tuneguard operator` process ({r['operator_workers']} "
        f"workers), all on one machine with {m['cpus']} CPUs (load average {m['load_average_1m']} at the start). "
        f"One worker pod per job. `apply`: one `kubectl apply --server-side` of a {r['jobs']}-document file; "
        f"`create`: {r['create_threads']} threads creating through the Python client.", "",
        markdown_table(["round", "pods", "client s", "start->pod median s", "start->pod p99 s", "start->all pods s",
                        "job->pod median s", "job->pod p99 s", "reconcile errors", "operator CPU s",
                        "operator peak RSS MiB"], rows), "",
        "`start->pod`: from the start of the client's requests to each job's first worker pod, as this "
        "process's watches see them; `job->pod`: from each FineTuneJob's own creation to its pod (the operator's "
        "and the Job controller's part; the JSON splits it). CPU seconds and reconcile errors are deltas over "
        "the round, the RSS is the operator's peak (VmHWM) so far.", "",
        f"Reproduce: `{r['command']}`", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--modes", default="apply,create")
    ap.add_argument("--threads", type=int, default=16, help="client threads of the create round")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for a round's pods")
    ap.add_argument("--out", help="results directory (default $OUT or docs/results/)")
    ap.add_argument("--quick", action="store_true", help="20 jobs (a smoke run)")
    ap.add_argument("--device", default="cpu", help="ignored (the operator never uses an accelerator)")
    args = ap.parse_args(argv)
    n = 20 if args.quick and args.jobs == 200 else args.jobs
    out = out_dir(args.out)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    from tests.e2e.harness import OperatorProcess

    gpu_nodes = max(2, -(-2 * n // 100))  # 110 pods per kwok node; room for two rounds
    machine = machine_info("cpu")
    t0 = time.time()
    cluster, plane = start_cluster(gpu_nodes)
    log(f"control plane up in {time.time() - t0:.1f} s ({gpu_nodes} kwok GPU nodes)")
    op = None
    try:
        install_crd(cluster)
        logs = Path(tempfile.mkdtemp(prefix="operator-scale-"))
        op = OperatorProcess(cluster, logs)
        op.start()
        cpu_start = proc_cpu_seconds(op.proc.pid)
        rounds = []
        for mode in args.modes.split(","):
            rounds.append(one_round(cluster, op, mode, n, args.threads, args.timeout, log))
        result = {
            "jobs": n, "gpu_nodes": gpu_nodes, "rounds": rounds,
            "operator_workers": int(os.environ.get("TUNEGUARD_OPERATOR_WORKERS", "8")),
            "operator_cpu_seconds_total": round(proc_cpu_seconds(op.proc.pid) - cpu_start, 2),
            "operator_peak_rss_mib": round(op.rss_kib()[1] / 1024, 1),
            "create_threads": args.threads,
            "machine": machine,
            "command": " ".join(["python", "bench/operator_scale.py"] + (argv if argv is not None else sys.argv[1:])),
            "wall_seconds": round(time.time() - t0, 1),
        }
        name = f"operator-scale-{n}"
        log(f"wrote {write_result(out, name, result, markdown(result))}")
        for x in rounds:
            cleanup(cluster, x["namespace"], log)
    finally:
        if op is not None:
            op.stop()
        if plane is not None:
            plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
