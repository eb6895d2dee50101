"""`helm install` of charts/tuneguard into the real control plane; the chart's RBAC is enough and no more.

The operator cannot run as a container here, so it runs as a local `tuneguard operator` process that
authenticates with a token of the chart's ServiceAccount: whatever it manages to do, the chart's
Role/ClusterRole allowed; whatever is refused, it did not.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.chart_tools import CHART, ROOT
from tests.cluster.polling import wait_for
from tests.conftest import fresh_namespace
from tests.e2e.local_processes import LocalOperator, get_json, token_kubeconfig

pytestmark = pytest.mark.cluster

RELEASE = "tuneguard"
SA = "tuneguard"  # the chart's ServiceAccount for release "tuneguard"


def ftj_manifest(name: str, namespace: str, **spec_overrides) -> dict:
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["metadata"] = {"name": name, "namespace": namespace}
    job["spec"]["resources"] = {"workers": 1, "gpusPerWorker": 1, "cpu": "1", "memory": "2Gi", "shmSize": "1Gi"}
    for k, v in spec_overrides.items():
        job["spec"][k] = v
    return job


def apply(cluster, obj: dict, kubeconfig=None) -> None:
    args = ["apply", "-f", "-"]
    if kubeconfig:
        args = ["--kubeconfig", str(kubeconfig), *args]
    cluster.kubectl(*args, input=json.dumps(obj))


@pytest.fixture(scope="module")
def namespaced_release(cluster, tmp_path_factory):
    """The chart installed in watch-namespaces mode: watches `watched`, not `other`."""
    release_ns = f"tg-{uuid.uuid4().hex[:6]}"
    with fresh_namespace(cluster) as watched, fresh_namespace(cluster) as other:
        out = cluster.helm("install", RELEASE, str(CHART), "--namespace", release_ns, "--create-namespace",
                           "--set", "watch.clusterWide=false", "--set", f"watch.namespaces={{{watched}}}",
                           timeout=300)
        try:
            yield {"release_ns": release_ns, "watched": watched, "other": other, "install": out.stdout,
                   "kubeconfig": token_kubeconfig(cluster, release_ns, SA,
                                                  tmp_path_factory.mktemp("sa") / "kubeconfig")}
        finally:
            cluster.helm("uninstall", RELEASE, "--namespace", release_ns, check=False)
            cluster.kubectl("delete", "namespace", release_ns, "--wait=false", check=False)


def test_helm_install_creates_the_chart_objects(cluster, namespaced_release):
    r = namespaced_release
    assert "STATUS: deployed" in r["install"], r["install"]
    notes = r["install"].split("NOTES:", 1)[1]  # what the user reads next
    for phrase in ("kubectl apply -f examples/quickstart.yaml", f"-n {r['watched']}", "kubectl get ftj",
                   f"{RELEASE}-dashboard", "does not serve monitoring.coreos.com/v1"):
        assert phrase in notes, (phrase, notes)
    status = json.loads(cluster.helm("status", RELEASE, "-n", r["release_ns"], "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.tuneguard.io")
    ns = r["release_ns"]
    dep = get_json(cluster, "deployment", "-n", ns, f"{RELEASE}-operator")
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate" and dep["spec"]["replicas"] == 2  # one leads
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--namespace={r['watched']}" in args
    get_json(cluster, "serviceaccount", "-n", ns, SA)
    get_json(cluster, "service", "-n", ns, f"{RELEASE}-operator")
    cm = get_json(cluster, "configmap", "-n", ns, f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and json.loads(cm["data"]["tuneguard.json"])
    role = get_json(cluster, "role", "-n", r["watched"], f"{RELEASE}-operator")
    assert any("finetunejobs/status" in rule["resources"] for rule in role["rules"])
    get_json(cluster, "rolebinding", "-n", r["watched"], f"{RELEASE}-operator")
    # namespaced mode: nothing cluster-scoped, nothing in unwatched namespaces
    assert not cluster.kubectl("get", "clusterrole", f"{RELEASE}-operator", "--ignore-not-found", "-o", "name").stdout.strip()
    assert not cluster.kubectl("get", "role", "-n", r["other"], "--ignore-not-found", "-o", "name").stdout.strip()
    # no Prometheus Operator in this cluster: no monitors were rendered (and the install did not fail)
    assert "ServiceMonitor" not in cluster.helm("get", "manifest", RELEASE, "-n", ns).stdout


def test_operator_with_the_chart_service_account_reconciles_a_job(cluster, namespaced_release, tmp_path):
    r = namespaced_release
    ns, job = r["watched"], "chart-rbac"
    op = LocalOperator(r["kubeconfig"], tmp_path, namespaces=[ns])
    try:
        op.wait_healthy()
        apply(cluster, ftj_manifest(job, ns))
        names = {"configmap": f"{job}-config", "service": f"{job}-worker", "serviceaccount": f"{job}-trainer",
                 "role": f"{job}-trainer", "rolebinding": f"{job}-trainer", "job.batch": f"{job}-worker"}

        def children():
            return all(cluster.kubectl("get", kind, "-n", ns, name, "--ignore-not-found", "-o", "name").stdout.strip()
                       for kind, name in names.items())

        wait_for(f"the children of {ns}/{job}", children, 120, 0.5, retry=Exception, describe=lambda: op.tail(3000))

        def running():
            return get_json(cluster, "ftj", "-n", ns, job).get("status", {}).get("phase") == "Running"

        wait_for(f"{ns}/{job} phase Running", running, 180, 0.5, retry=Exception, describe=lambda: op.tail(3000))
        ftj = get_json(cluster, "ftj", "-n", ns, job)
        assert ftj["status"]["workers"]["desired"] == 1
        # the trainer's Role (which the operator could only create holding the same verbs itself)
        role = get_json(cluster, "role", "-n", ns, f"{job}-trainer")
        assert any(rule["resources"] == ["finetunejobs/status"] for rule in role["rules"])
        events = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                                 f"involvedObject.name={job}", "-o", "name").stdout.split()
        assert events, "the operator posted no Event"
        # Nothing the operator itself did was refused: no reconcile error, no 403 in its own log lines.
        # (kopf's namespace/CRD observers may log 403s for cluster-scoped lists they fall back from;
        # granting those would need cluster-scoped rights the namespaced mode deliberately lacks.)
        errors = [l for l in op.metrics().splitlines() if l.startswith("tuneguard_operator_reconcile_errors_total")]
        assert errors and float(errors[0].split()[-1]) == 0, errors
        own = [l for l in op.tail(10**7).splitlines() if "tuneguard.operator" in l]
        assert not [l for l in own if "403" in l or "orbidden" in l], own
        print(f"\n{ns}/{job}: children created and phase Running, reconciled with the chart's ServiceAccount token")
    finally:
        op.stop()
        cluster.kubectl("delete", "ftj", "-n", ns, job, "--wait=false", check=False)


@pytest.mark.parametrize("action", [
    ("get", "secrets"),
    ("delete", "node", "kwok-node-does-not-matter"),
    ("get", "nodes"),
    ("create", "clusterrole", "tg-escalate", "--verb=*", "--resource=*"),
    ("get", "finetunejobs", "-n", "{other}"),
    ("get", "configmaps", "-n", "{other}"),
    ("create", "namespace", "tg-not-allowed"),
    ("delete", "pod", "any-pod", "-n", "{other}"),  # only in the watched namespaces (force-deleting lost workers)
    ("delete", "configmap", "kube-root-ca.crt"),
])
def test_the_chart_service_account_is_refused_outside_its_rbac(cluster, namespaced_release, action):
    r = namespaced_release
    args = [a.format(other=r["other"]) for a in action]
    if "-n" not in args:
        args += ["-n", r["watched"]]
    p = cluster.kubectl("--kubeconfig", str(r["kubeconfig"]), *args, check=False)
    assert p.returncode != 0 and "forbidden" in p.stderr.lower(), (args, p.stdout, p.stderr)


def test_the_chart_service_account_may_do_what_the_operator_needs(cluster, namespaced_release):
    r = namespaced_release
    ns = r["watched"]
    for verb, resource in [("watch", "finetunejobs.tuneguard.io"), ("patch", "finetunejobs.tuneguard.io/status"),
                           ("create", "jobs.batch"), ("delete", "jobs.batch"), ("create", "roles"),
                           ("create", "rolebindings"), ("patch", "configmaps"), ("list", "pods"), ("delete", "pods"), ("create", "events"), ("get", "nodes")]:
        p = cluster.kubectl("--kubeconfig", str(r["kubeconfig"]), "auth", "can-i", verb, resource, "-n", ns,
                            check=False)
        assert p.stdout.strip() == "yes", (verb, resource, p.stdout, p.stderr)


def test_cluster_wide_install_grants_every_namespace_but_no_secrets(cluster):
    release, ns = "tg-cluster", f"tg-{uuid.uuid4().hex[:6]}"
    cluster.helm("install", release, str(CHART), "--namespace", ns, "--create-namespace", timeout=300)
    try:
        crole = get_json(cluster, "clusterrole", f"{release}-tuneguard-operator")
        assert crole["rules"]
        sa = f"system:serviceaccount:{ns}:{release}-tuneguard"
        for verb, resource, want in [("list", "finetunejobs.tuneguard.io", "yes"), ("create", "jobs.batch", "yes"),
                                     ("get", "secrets", "no"), ("list", "nodes", "no"),
                                     ("create", "clusterroles", "no"), ("delete", "namespaces", "no")]:
            p = cluster.kubectl("auth", "can-i", verb, resource, "--all-namespaces", "--as", sa, check=False)
            assert p.stdout.strip() == want, (verb, resource, p.stdout, p.stderr)
    finally:
        cluster.helm("uninstall", release, "--namespace", ns, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
