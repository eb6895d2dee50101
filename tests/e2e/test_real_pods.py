"""The whole path on real containers: the chart's operator image runs in a pod on the real
node (in-cluster config, the chart's ServiceAccount and security context), and a 2-worker CPU
FineTuneJob of the bundled model runs in two pods of the CPU trainer image under the restricted
security context: they find each other through the headless Service (cluster DNS), triage, train,
evaluate, write report.json and the best model to the output PVC (a hostPath PV), rank 0 patches
status.training with the job's own token. The chart's ServiceMonitor, PodMonitor and PrometheusRule go
through the real Prometheus Operator, and a Prometheus run from the configuration it generated scrapes the
operator pods and the trainer by pod IP and loads the alert rules. Then the failure path: a worker's
container is killed mid-training, the operator restarts the group and the new pods resume from the
checkpoint on the PVC. Last, a planOnly job: triage and advice, nothing trained.

Both images come from scripts/build-images.sh (content-keyed, cached) and are imported into the node's
containerd once. The node's processes inherit this process's CPU priority.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.cluster.real_node import NODE_LABEL, NODE_NAME, POD_SUBNET, TAINT_KEY, VOLUMES_DIR, build_images
from tests.chart_tools import CHART
from tests.cluster.prometheus_operator import PrometheusOperator, local_config
from tests.e2e.harness import wait_for
from tests.prometheus.harness import Prometheus
from tuneguard import alerts

pytestmark = [pytest.mark.cluster, pytest.mark.real_node, pytest.mark.timeout(2400, func_only=True)]

# Root on Linux (the node's containerd, mounts and iptables); TUNEGUARD_REAL_NODE_E2E=0 leaves it out of a
# quick local run. The first run on a machine builds both images (see the README's Build and push section).
if os.environ.get("TUNEGUARD_REAL_NODE_E2E") == "0":
    pytest.skip("real-pod e2e left out: TUNEGUARD_REAL_NODE_E2E=0", allow_module_level=True)
if not (sys.platform.startswith("linux") and os.geteuid() == 0):
    pytest.skip("real-pod e2e needs root on Linux (a kubelet, containerd and the node's iptables rules)",
                allow_module_level=True)

RELEASE = "tuneguard"
FACTS = Path(__file__).resolve().parents[2] / "trainer_image" / "tuneguard_trainer" / "data" / "facts.jsonl"
TOLERATION = {"key": TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
SELECTOR = {NODE_LABEL: "true"}
RUN_AS = 1000  # tuneguard_operator.render.RUN_AS_USER
PROMETHEUS = "platform"  # the Prometheus object the Prometheus Operator generates a configuration for
MONITOR_LABELS = {"release": "kube-prometheus-stack"}  # what kube-prometheus-stack's Prometheus selects on


@pytest.fixture(scope="module")
def images(real_node):
    """name -> reference of the operator and CPU trainer images, built (cached) and in containerd."""
    started = time.monotonic()
    refs = build_images("operator", "trainer-cpu")
    real_node.import_images(refs, ["operator", "trainer-cpu"])
    print(f"\nimages ready in {time.monotonic() - started:.0f} s: {refs['operator']}, {refs['trainer-cpu']}")
    return refs


@pytest.fixture(scope="module")
def ns(cluster, crd_installed):
    name = f"rn-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def prometheus_operator(cluster, tmp_path_factory):
    po = PrometheusOperator(cluster, tmp_path_factory.mktemp("prometheus-operator")).start()
    try:
        yield po
    finally:
        po.stop()


@pytest.fixture(scope="module")
def operator_release(cluster, ns, images, prometheus_operator, tmp_path_factory):
    """`helm install` of the chart with the built operator image, watching `ns`, on the real node; its monitors
    labelled for the platform's Prometheus."""
    repo, tag = images["operator"].rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "IfNotPresent"},
        "watch": {"clusterWide": False, "namespaces": [ns]},
        "operator": {"nodeSelector": SELECTOR, "tolerations": [TOLERATION], "logFormat": "plain"},
        "monitoring": {"enabled": True, "labels": MONITOR_LABELS,
                       "serviceMonitor": {"interval": "2s"}, "podMonitor": {"interval": "2s"}},
    }
    path = tmp_path_factory.mktemp("helm") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    cluster.helm("install", RELEASE, str(CHART), "--namespace", ns, "-f", str(path), "--wait", "--timeout", "5m",
                 timeout=360)
    try:
        yield RELEASE
    finally:
        logs = cluster.kubectl("logs", "-n", ns, "-l", "app.kubernetes.io/name=tuneguard", "--tail=60", check=False)
        print(f"\n--- operator pod log (last lines) ---\n{logs.stdout}{logs.stderr}")
        cluster.helm("uninstall", RELEASE, "--namespace", ns, check=False)


@pytest.fixture(scope="module")
def generated_prometheus(cluster, ns, operator_release, prometheus_operator, tmp_path_factory) -> dict:
    """The configuration the Prometheus Operator generated from the chart's monitors for a Prometheus that
    selects them as kube-prometheus-stack's does, ready to run on the host (see local_config)."""
    selector = {"matchLabels": MONITOR_LABELS}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "metadata": {"name": PROMETHEUS, "namespace": ns},
        "spec": {"version": prometheus_operator.prometheus_version(),  # the config is made for the one that runs it
                 "scrapeInterval": "2s", "evaluationInterval": "2s", "serviceMonitorSelector": selector,
                 "podMonitorSelector": selector, "ruleSelector": selector}}))
    config, rules = prometheus_operator.generated(
        ns, PROMETHEUS, want=(f"serviceMonitor/{ns}/", f"podMonitor/{ns}/"))
    assert rules, f"no rule files generated from the chart's PrometheusRule:\n{prometheus_operator.log_tail()}"
    print(f"\ngenerated scrape jobs: {[j['job_name'] for j in config['scrape_configs']]}; rule files: {sorted(rules)}")
    return local_config(config, PROMETHEUS, cluster.kubeconfig, tmp_path_factory.mktemp("rules"), rules)


def host_path_volume(cluster, ns: str, name: str, files: dict[str, str] | None = None) -> Path:
    """A hostPath PersistentVolume pre-bound to a claim `name` in ns; returns its directory."""
    path = VOLUMES_DIR / ns / name
    path.mkdir(parents=True)
    for rel, text in (files or {}).items():
        (path / rel).write_text(text)
    os.chown(path, RUN_AS, RUN_AS)  # hostPath volumes are not chowned to the pod's fsGroup
    pv = f"{ns}-{name}"
    docs = [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(path), "type": "Directory"},
                  "claimRef": {"namespace": ns, "name": name}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": ns},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv,
                  "resources": {"requests": {"storage": "1Gi"}}}},
    ]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    return path


def small_facts(n: int = 24) -> str:
    """Every k-th bundled fact: real ones the model knows and fictional ones it cannot."""
    lines = FACTS.read_text().splitlines()
    step = max(len(lines) // n, 1)
    return "\n".join(lines[::step][:n]) + "\n"


def job_manifest(name: str, ns: str, image: str, out: str, steps: int) -> dict:
    return {
        "apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"uri": "bundled://smollm2-135m-instruct"},
            "datasets": {"train": "pvc://data/train.jsonl"},
            "method": {"type": "sft"},
            "triage": {"prompts": 1, "shots": 2, "samples": 1},
            "training": {"maxSteps": steps, "batchSize": 2, "learningRate": 1.0e-4, "maxSeqLength": 64,
                         "checkpointInterval": 2},
            "deepspeed": {"zeroStage": 0, "precision": "fp32"},
            "evaluation": {"intervalSteps": steps // 2, "maxProbeSize": 4},
            "guardrails": {"maxHallucinationIncrease": 0.5, "action": "warn"},
            "resources": {"workers": 2, "gpusPerWorker": 0, "image": image, "imagePullPolicy": "IfNotPresent",
                          "cpu": "900m", "memory": "6Gi", "shmSize": "256Mi",
                          "nodeSelector": SELECTOR, "tolerations": [TOLERATION]},
            "output": {"uri": f"pvc://output/{out}"},
            "runPolicy": {"backoffLimit": 2},
        },
    }


def ftj(cluster, ns: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "ftj", "-n", ns, name, "-o", "json").stdout)


def worker_pods(cluster, ns: str, name: str) -> list[dict]:
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", f"tuneguard.io/job={name}", "-o", "json").stdout
    return sorted(json.loads(out)["items"],
                  key=lambda p: p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", ""))


def describe(cluster, ns: str, name: str) -> str:
    pods = cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout
    status = cluster.kubectl("get", "ftj", "-n", ns, name, "-o", "jsonpath={.status}", check=False).stdout
    return f"\n{pods}\nstatus: {status[-1500:]}"


@pytest.fixture(scope="module")
def volumes(cluster, ns):
    return {"data": host_path_volume(cluster, ns, "data", {"train.jsonl": small_facts()}),
            "output": host_path_volume(cluster, ns, "output")}


def test_operator_runs_in_cluster_on_the_real_node(cluster, ns, operator_release):
    pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=tuneguard",
                                      "-o", "json").stdout)["items"]
    assert len(pods) == 2  # the chart's default: a leader and a standby
    assert all(p["spec"]["nodeName"] == NODE_NAME and p["status"]["phase"] == "Running" for p in pods)

    def holder():  # the Lease, taken with the operator's own token (the chart's leader-election Role)
        leases = json.loads(cluster.kubectl("get", "leases", "-n", ns, "-o", "json").stdout)["items"]
        who = [(lease["spec"].get("holderIdentity") or "") for lease in leases]
        return next((p for p in pods for w in who if w.startswith(p["metadata"]["name"] + "_")), None)

    leader = wait_for("an operator pod to hold the Lease", holder, timeout=60, interval=1)
    # In-cluster: the ServiceAccount token is mounted and the API server is reached through the
    # `kubernetes` Service (kube-proxy): the health endpoint is served from each pod, the standby's too.
    probe = ("import os, urllib.request; print(os.environ['KUBERNETES_SERVICE_HOST'], "
             "urllib.request.urlopen('http://127.0.0.1:8081/healthz').status, os.getuid(), "
             "[l for l in urllib.request.urlopen('http://127.0.0.1:8080/metrics').read().decode().splitlines() "
             "if l.startswith('tuneguard_operator_leader ')][0].split()[1])")
    for pod in pods:
        host, status, uid, leads = cluster.kubectl("exec", "-n", ns, pod["metadata"]["name"], "--", "python", "-c",
                                                   probe).stdout.split()
        assert host == "10.96.0.1" and status == "200" and uid == "65532"
        assert float(leads) == (1.0 if pod is leader else 0.0), pod["metadata"]["name"]


def test_two_worker_job_trains_on_real_pods(cluster, ns, operator_release, images, volumes, prometheus_operator,
                                            generated_prometheus, tmp_path):
    name = "real-sft"
    started = time.monotonic()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job_manifest(name, ns, images["trainer-cpu"], "sft", 4)))

    def running_rank0():
        pods = worker_pods(cluster, ns, name)
        return pods[0] if pods and pods[0]["status"].get("phase") == "Running" and pods[0]["status"].get("podIP") \
            else None
    rank0 = wait_for("rank 0 running", running_rank0, timeout=600, interval=2,
                     describe=lambda: describe(cluster, ns, name))
    ip = rank0["status"]["podIP"]
    assert ip.startswith(POD_SUBNET.rsplit(".", 2)[0] + ".") and rank0["spec"]["nodeName"] == NODE_NAME

    # The platform's Prometheus, from the generated configuration: it finds rank 0 through the PodMonitor and
    # the operator pods through the ServiceMonitor, by the API server's pods and endpoints, and scrapes them.
    with Prometheus(tmp_path / "prometheus", config=generated_prometheus, exe=prometheus_operator.prometheus) as prom:
        series = prom.wait_for(f'tuneguard_train_step{{job="{name}",namespace="{ns}"}} >= 1', timeout=900,
                               what="rank 0's training step, scraped from the pod")
        phase = prom.wait_for(f'tuneguard_job_phase{{job="{name}",namespace="{ns}"}} == 1', timeout=120,
                              what="the job's phase, scraped from the leading operator pod")
        targets = prom.targets()
        groups = prom.api("rules")["groups"]
    print(f"\nscraped: {json.dumps(series)}\nphase: {json.dumps(phase)}\nscrape targets the Prometheus Operator produced:")
    for t in targets:
        print(f"  {t['scrapePool']:<48} {t['scrapeUrl']:<36} {t['labels'].get('pod', ''):<34} {t['health']}")
    assert all(t["health"] == "up" for t in targets), targets  # rank 1 serves no metrics: the PodMonitor skips it
    up = {(t["scrapePool"].split("/")[0], t["labels"].get("pod")) for t in targets}
    assert ("podMonitor", rank0["metadata"]["name"]) in up and len(up) == 3, targets  # rank 0, two operator pods
    operator_pods = cluster.kubectl("get", "pods", "-n", ns, "-l", "app.kubernetes.io/name=tuneguard", "-o", "name").stdout
    assert {("serviceMonitor", p.split("/", 1)[1]) for p in operator_pods.split()} <= up, targets
    loaded = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert set(loaded) == {a.name for a in alerts.alerts()}, sorted(loaded)
    assert all(r["health"] == "ok" for r in loaded.values()), [(n, r.get("lastError")) for n, r in loaded.items()]

    final = wait_for("the job to succeed", lambda: (lambda j: j if j.get("status", {}).get("phase") in
                                                    ("Succeeded", "Failed") else None)(ftj(cluster, ns, name)),
                     timeout=1200, interval=3, describe=lambda: describe(cluster, ns, name))
    wall = time.monotonic() - started
    print(f"\njob {name}: {final['status']['phase']} in {wall:.0f} s")
    print(cluster.kubectl("get", "ftj", "-n", ns, "-o", "wide").stdout)
    for pod in worker_pods(cluster, ns, name):
        log = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"], check=False)
        print(f"--- {pod['metadata']['name']} (last lines) ---\n" + "\n".join(log.stdout.splitlines()[-25:]))
    assert final["status"]["phase"] == "Succeeded", describe(cluster, ns, name)
    assert final["status"]["reason"] == "Succeeded"  # the Reason column
    training = final["status"]["training"]
    # training.step itself reads 0 after a resume at the last step (seen in a run with restarts).
    assert training["bestCheckpoint"]["step"] == 4, training
    assert training.get("metrics") and training.get("triage"), training

    pods = worker_pods(cluster, ns, name)
    assert len(pods) == 2 and {p["spec"]["nodeName"] for p in pods} == {NODE_NAME}
    for p in pods:
        sc = p["spec"]["containers"][0]["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert sc["readOnlyRootFilesystem"] is True  # the trainer ran with only its volumes writable
        assert p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    rank1_log = cluster.kubectl("logs", "-n", ns, pods[1]["metadata"]["name"]).stdout
    assert rank1_log  # rank 1 joined rank 0 through the headless Service name and trained

    out = volumes["output"] / "sft"
    report = json.loads((out / "report.json").read_text())
    assert (out / "best-model" / "config.json").exists(), sorted(p.name for p in out.iterdir())
    assert report, report
    print(f"\nreport keys: {sorted(report)}")


def test_killed_worker_restarts_the_group_and_resumes(cluster, ns, operator_release, images, volumes, real_node):
    name = "real-restart"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(job_manifest(name, ns, images["trainer-cpu"], "restart", 6)))
    # Wait for the first checkpoint (every 2 steps), then kill rank 1's container from the host.
    wait_for("step 3", lambda: (ftj(cluster, ns, name).get("status", {}).get("training") or {}).get("step", 0) >= 3,
             timeout=1200, interval=2, describe=lambda: describe(cluster, ns, name))
    pod = worker_pods(cluster, ns, name)[1]
    container = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    real_node.ctr("tasks", "kill", "--signal", "SIGKILL", container)
    final = wait_for("the job to end", lambda: (lambda j: j if j.get("status", {}).get("phase") in
                                                ("Succeeded", "Failed") else None)(ftj(cluster, ns, name)),
                     timeout=1500, interval=3, describe=lambda: describe(cluster, ns, name))
    print(cluster.kubectl("get", "ftj", "-n", ns, "-o", "wide").stdout)
    assert final["status"]["phase"] == "Succeeded", describe(cluster, ns, name)
    assert final["status"].get("restarts", 0) >= 1, final["status"]
    log = cluster.kubectl("logs", "-n", ns, worker_pods(cluster, ns, name)[0]["metadata"]["name"]).stdout
    print("--- rank 0 after the restart (last lines) ---\n" + "\n".join(log.splitlines()[-20:]))
    report = json.loads((volumes["output"] / "restart" / "report.json").read_text())
    assert report.get("resumed_from"), sorted(report)
    print(f"resumed from {report['resumed_from']} after {final['status']['restarts']} group restart(s)")
    assert report["resumed_from"]["step"] >= 2


def test_plan_only_job_advises_and_trains_nothing(cluster, ns, operator_release, images, volumes):
    """spec.planOnly in a cluster: triage and advice on the job's own model and data, no training."""
    name = "real-plan"
    manifest = job_manifest(name, ns, images["trainer-cpu"], "plan", 4)
    manifest["spec"]["planOnly"] = True
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    final = wait_for("the plan-only job to end", lambda: (lambda j: j if j.get("status", {}).get("phase") in
                                                          ("Succeeded", "Failed") else None)(ftj(cluster, ns, name)),
                     timeout=900, interval=3, describe=lambda: describe(cluster, ns, name))
    print(cluster.kubectl("get", "ftj", "-n", ns, name, "-o", "wide").stdout)
    assert final["status"]["phase"] == "Succeeded", describe(cluster, ns, name)
    plan = final["status"]["training"]["plan"]
    assert plan["method"] and plan["reason"] and 0 <= plan["unknownShare"] <= 1, plan
    out = volumes["output"] / "plan"
    report = json.loads((out / "report.json").read_text())
    assert report["plan_only"] is True and report["plan"]["recommendation"], sorted(report)
    assert not (out / "best-model").exists() and not (out / "checkpoints").exists(), sorted(p.name for p in out.iterdir())
