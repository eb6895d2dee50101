"""The operator end to end: a real `tuneguard operator` process against the real control plane
(kube-apiserver, kube-controller-manager's Job controller and garbage collector, kube-scheduler, and
kwok running the pods on simulated 8-GPU nodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tuneguard import contract

from .harness import REPO, condition, cpu_job, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

CHILD_KINDS = "configmap,service,networkpolicy,serviceaccount,role,rolebinding,job"


def env_of(pod: dict) -> dict[str, dict]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def children(kc, name: str, ns: str) -> list[str]:
    items = kc.get(CHILD_KINDS, "-n", ns, "-l", f"tuneguard.io/job={name}")["items"]
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in items)


def expected_children(name: str) -> list[str]:
    return sorted([f"ConfigMap/{name}-config", f"Service/{name}-worker", f"NetworkPolicy/{name}-workers",
                   f"ServiceAccount/{name}-trainer",
                   f"Role/{name}-trainer", f"RoleBinding/{name}-trainer", f"Job/{name}-worker"])


def start(kc, ns: str, doc: dict, timeout: float = 60) -> dict:
    kc.apply(doc, ns)
    name = doc["metadata"]["name"]
    kc.wait_phase(name, ns, "Running", timeout)
    return kc.ftj(name, ns)


def reasons(kc, name: str, ns: str) -> list[str]:
    return [e["reason"] for e in kc.events(name, ns)]


# ------------------------------------------------------------------------------ 1. the example


@pytest.fixture
def ml_team(cluster, kc, gpus_free):
    """The example's namespace with what it references: the hub token Secret and two bound PVCs."""
    ns = "ml-team"
    suffix = uuid.uuid4().hex[:6]
    kc("create", "namespace", ns)
    wait_for("the default ServiceAccount", lambda: kc.get_or_none("serviceaccount", "default", ns))
    kc("create", "secret", "generic", "hf-token", "-n", ns, "--from-literal=HF_TOKEN=hf_test")
    pvs = []
    for claim in ("datasets", "checkpoints"):
        pv = f"{claim}-{suffix}"
        pvs.append(pv)
        kc.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
                  "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"],
                           "storageClassName": "manual", "hostPath": {"path": f"/data/{claim}"},
                           "claimRef": {"namespace": ns, "name": claim}}})
        kc.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": ns},
                  "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": pv,
                           "resources": {"requests": {"storage": "100Gi"}}}})
    for claim in ("datasets", "checkpoints"):
        kc("wait", "-n", ns, f"pvc/{claim}", "--for=jsonpath={.status.phase}=Bound", "--timeout=60s")
    yield ns
    kc("delete", "finetunejob", "--all", "-n", ns, "--wait=true", "--timeout=60s", check=False)
    kc("delete", "namespace", ns, "--wait=false", check=False)
    kc("delete", "pv", *pvs, "--wait=false", check=False)


def test_multinode_example_runs_on_gpu_nodes(operator, kc, ml_team):
    ns = ml_team
    kc("apply", "-f", str(REPO / "examples" / "multinode-sft.yaml"))
    st = kc.wait_phase("facts-sft", ns, "Running", 90)
    assert st["workers"] == {"desired": 2, "active": 2, "ready": 2, "succeeded": 0, "failed": 0}
    assert condition(st, "Created")["status"] == "True"
    assert condition(st, "Running")["status"] == "True"
    assert st["observedGeneration"] == 1 and st["startTime"]

    assert children(kc, "facts-sft", ns) == expected_children("facts-sft")
    cm = kc.get("configmap", "facts-sft-config", "-n", ns)
    manifest = yaml.safe_load(cm["data"][contract.CONFIG_FILE])
    assert manifest["spec"]["resources"]["gpusPerWorker"] == 8
    assert set(cm["data"]) == {contract.CONFIG_FILE}
    svc = kc.get("service", "facts-sft-worker", "-n", ns)
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True

    pods = kc.pods("facts-sft", ns, running=True)
    assert len(pods) == 2
    nodes = kc.get("nodes")["items"]
    gpu_nodes = {n["metadata"]["name"] for n in nodes if n["status"]["allocatable"].get("nvidia.com/gpu") == "8"}
    assert {p["spec"]["nodeName"] for p in pods} == gpu_nodes and len(gpu_nodes) == 2  # 8 GPUs each: one per node
    for rank, pod in enumerate(pods):
        c = pod["spec"]["containers"][0]
        assert c["command"] == contract.WORKER_COMMAND
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert c["resources"]["limits"]["cpu"] == "32" and c["resources"]["limits"]["memory"] == "256Gi"
        env = env_of(pod)
        assert env["MASTER_ADDR"]["value"] == "facts-sft-worker-0.facts-sft-worker"
        assert env["NNODES"]["value"] == "2"
        assert env["NPROC_PER_NODE"]["value"] == "8" and env["MASTER_PORT"]["value"] == "29500"
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
        # NODE_RANK comes from the completion index the Job controller stamped on this pod
        assert pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == str(rank)
        assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert pod["spec"]["hostname"] == f"facts-sft-worker-{rank}"
        assert pod["spec"]["subdomain"] == "facts-sft-worker"
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert vols["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
        assert vols["output"]["persistentVolumeClaim"]["claimName"] == "checkpoints"
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "datasets" for v in vols.values())
        labels = pod["metadata"]["labels"]
        assert labels[contract.LABEL_JOB] == "facts-sft" and labels[contract.LABEL_ROLE] == "worker"
        assert labels[contract.LABEL_METHOD] == "sft"
        assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in c["ports"]
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert pod["spec"]["serviceAccountName"] == "facts-sft-trainer"

    cols = kc.printed_row("facts-sft", ns)
    assert (cols["METHOD"], cols["WORKERS"], cols["PHASE"]) == ("sft", "2", "Running"), cols

    ftj = kc.ftj("facts-sft", ns)
    assert not ftj["metadata"].get("finalizers"), "no finalizer may block deletion"
    assert not [a for a in ftj["metadata"].get("annotations") or {} if "kopf" in a]


def test_pending_job_says_why(operator, kc, namespace):
    """Pods stuck Pending are the most asked-about training-operator problem: the status says why."""
    ns = namespace
    doc = cpu_job("toobig", workers=2)
    doc["spec"]["resources"]["gpusPerWorker"] = 16  # the simulated nodes have 8 each
    kc.apply(doc, ns)
    st = wait_for("the scheduler's reason in status.message",
                  lambda: (s := kc.status("toobig", ns)).get("message", "").count("Insufficient nvidia.com/gpu") == 2
                  and s, 60, describe=lambda: kc.status("toobig", ns).get("message"))
    assert st["phase"] == "Pending" and st["workers"]["ready"] == 0
    assert "toobig-worker-0: Unschedulable" in st["message"]
    kc("delete", "ftj", "toobig", "-n", ns)


def test_spec_the_server_accepts_but_the_models_refuse_fails_clearly(operator, kc, namespace):
    """A regular expression is checked by the shared models only (CEL cannot compile it): the operator
    runs nothing and says which field is wrong."""
    ns = namespace
    doc = cpu_job("badregex", workers=1)
    doc["spec"]["method"] = {"type": "freeze", "freeze": {"trainablePatterns": ["self_attn("]}}
    kc.apply(doc, ns)
    st = kc.wait_phase("badregex", ns, "Failed", 30)
    cond = condition(st, "Failed")
    assert cond["reason"] == "InvalidSpec" and "trainablePatterns" in cond["message"], cond
    assert not children(kc, "badregex", ns)


# ------------------------------------------------------------------- 2. failures and success


def test_worker_failure_restarts_the_group_until_the_backoff_limit(operator, kc, cluster, namespace):
    ns = namespace
    start(kc, ns, cpu_job("flaky", workers=2, backoffLimit=1))
    first = kc.pods("flaky", ns, running=True)
    cluster.finish_pod(ns, first[1]["metadata"]["name"], exit_code=1)

    st = kc.wait_phase("flaky", ns, "Running", 90, restarts=1)
    assert condition(st, "Restarting")["status"] == "False"
    pods = kc.pods("flaky", ns, running=True)
    assert len(pods) == 2
    assert not {p["metadata"]["uid"] for p in pods} & {p["metadata"]["uid"] for p in first}
    for p in pods:
        assert p["metadata"]["labels"]["tuneguard.io/restart-attempt"] == "1"
    failed = [e for e in kc.events("flaky", ns) if e["reason"] == "WorkerFailed"]
    assert len(failed) == 1 and failed[0]["type"] == "Warning" and "exit code 1" in failed[0]["message"]

    cluster.finish_pod(ns, pods[0]["metadata"]["name"], exit_code=1)
    st = kc.wait_phase("flaky", ns, "Failed", 60)
    assert st["restarts"] == 1 and st["completionTime"]
    cond = condition(st, "Failed")
    assert cond["reason"] == "BackoffLimitExceeded" and "backoffLimit is 1" in cond["message"]
    assert "BackoffLimitExceeded" in reasons(kc, "flaky", ns)
    wait_for("the restart counter in /metrics", lambda: 'tuneguard_operator_group_restarts_total{job="flaky",'
             f'namespace="{ns}"}} 1.0' in operator.metrics())
    assert f'tuneguard_job_restarts{{job="flaky",method="self-distill",namespace="{ns}"}} 1.0' in operator.metrics()


def test_a_preempted_worker_restarts_the_group_without_spending_the_backoff_limit(operator, kc, cluster, namespace):
    """A worker ended by a disruption (its DisruptionTarget condition, as preemption, eviction and node drain set
    it; here written by the test, then the pod ends with 137 as a killed container does): with backoffLimit 0 the
    group still restarts, counted in status.disruptions, and the Event says what happened."""
    ns = namespace
    start(kc, ns, cpu_job("preempted", workers=2, backoffLimit=0))
    victim = kc.pods("preempted", ns, running=True)[1]
    now = "2026-01-01T00:00:00Z"
    kc("patch", "pod", victim["metadata"]["name"], "-n", ns, "--subresource=status", "--type=strategic", "-p",
       json.dumps({"status": {  # in one write, as the kubelet reports a killed pod (kwok would rewrite a later one)
           "phase": "Failed",
           "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                           "message": "preempted by a higher-priority pod", "lastTransitionTime": now}],
           "containerStatuses": [{"name": c["name"], "image": c["image"], "ready": False, "restartCount": 0,
                                  "state": {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": now,
                                                           "finishedAt": now}}}
                                 for c in victim["spec"]["containers"]]}}))
    st = kc.wait_phase("preempted", ns, "Running", 90, disruptions=1)
    assert st["restarts"] == 0
    pods = kc.pods("preempted", ns, running=True)
    assert len(pods) == 2 and all(p["metadata"]["labels"]["tuneguard.io/restart-attempt"] == "1" for p in pods)
    (event,) = [e for e in kc.events("preempted", ns) if e["reason"] == "WorkerDisrupted"]
    assert event["type"] == "Warning" and "DisruptionTarget" in event["message"]
    assert "not counted against backoffLimit (disruption 1)" in event["message"]
    # a real failure afterwards still spends the (zero) backoff limit
    cluster.finish_pod(ns, pods[0]["metadata"]["name"], exit_code=1)
    st = kc.wait_phase("preempted", ns, "Failed", 60)
    assert (st["restarts"], st["disruptions"], st["reason"]) == (0, 1, "BackoffLimitExceeded")


def test_all_workers_succeeding_then_ttl_cleanup(operator, kc, cluster, namespace):
    ns = namespace
    start(kc, ns, cpu_job("done", workers=2, ttlSecondsAfterFinished=8))
    for pod in kc.pods("done", ns, running=True):
        cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=0)
    st = kc.wait_phase("done", ns, "Succeeded", 60)
    assert st["completionTime"] and condition(st, "Succeeded")["status"] == "True"
    assert condition(st, "Running")["status"] == "False"
    assert st["workers"]["succeeded"] == 2
    assert "Succeeded" in reasons(kc, "done", ns)
    wait_for("the TTL to delete the FineTuneJob", lambda: kc.ftj("done", ns) is None, 40)
    wait_for("its children to be garbage-collected", lambda: not children(kc, "done", ns), 60,
             describe=lambda: str(children(kc, "done", ns)))


# ---------------------------------------------------------------- 3. suspend, deadline, delete


def test_suspend_and_resume(operator, kc, namespace):
    ns = namespace
    start(kc, ns, cpu_job("pause"))
    kc("patch", "ftj", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    st = kc.wait_phase("pause", ns, "Suspended", 60)
    assert condition(st, "Suspended")["status"] == "True"
    wait_for("the workers to stop", lambda: not kc.pods("pause", ns), 60)
    assert kc.get("job", "pause-worker", "-n", ns)["spec"]["suspend"] is True

    kc("patch", "ftj", "pause", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    st = kc.wait_phase("pause", ns, "Running", 60)
    assert condition(st, "Suspended")["reason"] == "Resumed" and condition(st, "Suspended")["status"] == "False"
    assert len(kc.pods("pause", ns, running=True)) == 2
    assert st["restarts"] == 0  # a suspension is not a failure
    assert {"Suspended", "Resumed"} <= set(reasons(kc, "pause", ns))


def test_active_deadline(operator, kc, namespace):
    ns = namespace
    start(kc, ns, cpu_job("late", activeDeadlineSeconds=8))
    st = kc.wait_phase("late", ns, "Failed", 40)
    assert condition(st, "Failed")["reason"] == "DeadlineExceeded"
    wait_for("the workers to stop", lambda: not kc.pods("late", ns), 60)
    assert "DeadlineExceeded" in reasons(kc, "late", ns)


def test_delete_removes_children(operator, kc, namespace):
    ns = namespace
    start(kc, ns, cpu_job("gone"))
    assert children(kc, "gone", ns) == expected_children("gone")
    kc("delete", "ftj", "gone", "-n", ns, "--timeout=30s")
    wait_for("children and pods to be garbage-collected",
             lambda: not children(kc, "gone", ns) and not kc.pods("gone", ns), 60,
             describe=lambda: str(children(kc, "gone", ns)))
    assert 'job="gone"' not in operator.metrics()


def test_recreated_under_the_same_name_gets_fresh_children(operator, kc, namespace):
    """Delete and re-apply at once: the old children (owned by the old uid) are left to the garbage
    collector and the new job gets its own, never the old ones."""
    ns = namespace
    old_uid = start(kc, ns, cpu_job("again"))["metadata"]["uid"]
    kc("delete", "ftj", "again", "-n", ns, "--wait=true")
    kc.apply(cpu_job("again"), ns)
    waiting = wait_for("a Pending status while the old children go", lambda: kc.status("again", ns).get("phase"))
    assert waiting in ("Pending", "Running")
    kc.wait_phase("again", ns, "Running", 90)
    new_uid = kc.ftj("again", ns)["metadata"]["uid"]
    assert new_uid != old_uid
    assert children(kc, "again", ns) == expected_children("again")
    for kind in ("configmap", "service", "serviceaccount", "role", "rolebinding", "job"):
        for obj in kc.get(kind, "-n", ns, "-l", "tuneguard.io/job=again")["items"]:
            assert [r["uid"] for r in obj["metadata"]["ownerReferences"]] == [new_uid], (kind, obj["metadata"])
    assert all(p["metadata"]["labels"]["tuneguard.io/restart-attempt"] == "0" for p in kc.pods("again", ns))


# ---------------------------------------------------------------------- 4. operator restart


def test_operator_killed_and_restarted_mid_run(operator, kc, cluster, namespace):
    ns = namespace
    start(kc, ns, cpu_job("survivor", backoffLimit=3))
    start(kc, ns, cpu_job("orphan"))
    operator.stop(kill=True)
    # While it is down: a worker fails, and another job is deleted (no finalizer may block that).
    pod = kc.pods("survivor", ns, running=True)[0]
    cluster.finish_pod(ns, pod["metadata"]["name"], exit_code=1)
    kc("delete", "ftj", "orphan", "-n", ns, "--timeout=20s")
    wait_for("the orphan's children to be garbage-collected with the operator down",
             lambda: not children(kc, "orphan", ns) and not kc.pods("orphan", ns), 60)

    operator.start()
    st = kc.wait_phase("survivor", ns, "Running", 90, restarts=1)
    assert children(kc, "survivor", ns) == expected_children("survivor")
    # A later reconcile (a resync, a status event) counts nothing twice and duplicates nothing.
    kc("annotate", "ftj", "survivor", "-n", ns, "poke=1")
    wait_for("a reconcile after the poke", lambda: kc.status("survivor", ns).get("workers", {}).get("ready") == 2)
    st = kc.status("survivor", ns)
    assert st["restarts"] == 1 and st["phase"] == "Running"
    assert len(kc.pods("survivor", ns)) == 2
    assert len(kc.get("jobs", "-n", ns, "-l", "tuneguard.io/job=survivor")["items"]) == 1
    assert reasons(kc, "survivor", ns).count("WorkerFailed") == 1


# ------------------------------------------------------------------------ 5. the trainer's RBAC


def token_kubeconfig(kc, tmp_path: Path, ns: str, account: str) -> Path:
    token = kc("create", "token", account, "-n", ns, "--duration=10m").stdout.strip()
    raw = json.loads(kc("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
    cluster = raw["clusters"][0]
    cfg = {"apiVersion": "v1", "kind": "Config", "clusters": [cluster],
           "users": [{"name": account, "user": {"token": token}}],
           "contexts": [{"name": "sa", "context": {"cluster": cluster["name"], "user": account, "namespace": ns}}],
           "current-context": "sa"}
    path = tmp_path / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(cfg))
    return path


# What rank 0 does with the pod's token: the trainer's own Telemetry and tuneguard.kube, in a process of
# their own (the kubernetes client keeps its configuration in a module global).
TRAINER_PATCH = """
import sys
from tuneguard import api
from tuneguard.kube import ApiError, Kube, load_client, path
from tuneguard_trainer.telemetry import Telemetry

ns, own, other = sys.argv[1:]
t = Telemetry(job=own, namespace=ns, method="self-distill", status_patch=True)
t.stage("training")
t.plan(10)
t.step(5, 0.5, 1.2, tokens=100, tokens_per_second=50.0)
t.figures({"hallucination_rate": 0.07, "drift_kl": 0.2}, "tuned")
assert t._patch_failures == 0, "the trainer could not patch its own job's status"
try:
    Kube(load_client(connections=1)).patch(path(api.KIND, ns, other, "status"), {"status": {"training": {"step": 1}}})
except ApiError as e:
    print(e.status)
"""


def test_job_service_account_patches_only_its_own_status(operator, kc, namespace, tmp_path):
    ns = namespace
    start(kc, ns, cpu_job("alpha", workers=1))
    start(kc, ns, cpu_job("beta", workers=1))
    cfg = token_kubeconfig(kc, tmp_path, ns, "alpha-trainer")
    env = {**os.environ, "KUBECONFIG": str(cfg)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    res = subprocess.run([sys.executable, "-c", TRAINER_PATCH, ns, "alpha", "beta"], env=env, capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split() == ["403"], (res.stdout, res.stderr[-3000:])  # beta's status: forbidden
    own = kc("--kubeconfig", str(cfg), "get", "ftj", "alpha", "-n", ns, "-o", "json")
    training = json.loads(own.stdout)["status"]["training"]
    assert (training["stage"], training["step"], training["totalSteps"]) == ("training", 5, 10), training
    spec = kc("--kubeconfig", str(cfg), "patch", "ftj", "alpha", "-n", ns, "--type=merge",
              "-p", '{"spec":{"runPolicy":{"suspend":true}}}', check=False)
    assert spec.returncode != 0 and "forbidden" in spec.stderr.lower(), spec.stderr

    # The printer columns show the trainer's figures; the operator mirrors them into /metrics.
    row = kc.printed_row("alpha", ns)
    assert (row["PROGRESS"], row["HALLUC"], row["DRIFT-KL"], row["KNOWN-ACC"]) == ("50%", "0.07", "0.2", ""), row
    wait_for("the mirrored hallucination gauge", lambda: 'tuneguard_job_hallucination_rate{job="alpha",'
             f'method="self-distill",namespace="{ns}"}} 0.07' in operator.metrics())
    # The operator's own status writes never clobber status.training.
    kc("patch", "ftj", "alpha", "-n", ns, "--type=merge", "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    st = kc.wait_phase("alpha", ns, "Suspended", 60)
    assert st["training"]["step"] == 5 and st["training"]["metrics"]["driftKL"] == 0.2


# ------------------------------------------------------------------ 6. what may change, and not


def test_immutable_fields_are_refused_and_mutable_ones_take_effect(operator, kc, namespace):
    ns = namespace
    start(kc, ns, cpu_job("edit", workers=1))
    for patch, field in [({"resources": {"workers": 3}}, "spec.resources.workers"),
                         ({"training": {"learningRate": 0.001}}, "spec.training"),
                         ({"method": {"type": "sft", "selfDistill": None}}, "spec.method")]:
        out = kc("patch", "ftj", "edit", "-n", ns, "--type=merge", "-p", json.dumps({"spec": patch}), check=False)
        assert out.returncode != 0, f"{field} change was accepted"
        assert f"{field} is immutable once the job exists" in out.stderr, out.stderr

    out = kc("patch", "ftj", "edit", "-n", ns, "--type=merge", "-p",
             '{"spec":{"resources":{"env":[{"name":"MASTER_ADDR","value":"elsewhere"}]}}}', check=False)
    assert out.returncode != 0 and "env may not set the launch variables" in out.stderr, out.stderr

    kc("patch", "ftj", "edit", "-n", ns, "--type=merge", "-p",
       '{"spec":{"guardrails":{"maxDriftKL":0.25,"action":"stop"},"runPolicy":{"backoffLimit":5},'
       '"resources":{"env":[{"name":"NCCL_SOCKET_IFNAME","value":"eth0"}]}}}')

    def config():
        cm = kc.get("configmap", "edit-config", "-n", ns)
        return yaml.safe_load(cm["data"][contract.CONFIG_FILE])["spec"]

    spec = wait_for("the ConfigMap to carry the new guardrails",
                    lambda: (s := config())["guardrails"].get("maxDriftKL") == 0.25 and s, 30,
                    describe=lambda: str(config()["guardrails"]))
    assert spec["guardrails"]["action"] == "stop" and spec["runPolicy"]["backoffLimit"] == 5
    assert spec["resources"]["env"] == [{"name": "NCCL_SOCKET_IFNAME", "value": "eth0"}]
    gen = kc.ftj("edit", ns)["metadata"]["generation"]
    wait_for("observedGeneration to follow", lambda: kc.status("edit", ns).get("observedGeneration") == gen)
    assert kc.status("edit", ns)["phase"] == "Running"  # the workers keep running; the trainer re-reads


def test_operator_metrics_and_json_logs(operator):
    text = operator.metrics()
    for name in (contract.OP_JOBS, contract.OP_RECONCILE_SECONDS + "_bucket", contract.OP_RECONCILE_ERRORS):
        assert name in text, name
    lines = [json.loads(line) for line in operator.log_path.read_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "message"} <= set(line) for line in lines)
