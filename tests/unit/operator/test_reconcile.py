"""The reconciler against an in-memory API: idempotent convergence, crash safety, metrics."""

from datetime import datetime, timezone
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from tuneguard import contract
from tuneguard.kube import path
from tuneguard_operator.metrics import Metrics
from tuneguard_operator.reconcile import Reconciler

from .fakekube import FakeKube

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
FTJ = path("FineTuneJob", "ml-team", "facts-sft")
JOB = path("Job", "ml-team", "facts-sft-worker")


def setup():
    kube = FakeKube()
    doc = yaml.safe_load((ROOT / "examples" / "multinode-sft.yaml").read_text())
    kube.create(path("FineTuneJob", "ml-team"), doc)
    metrics = Metrics()
    return kube, Reconciler(kube, metrics, clock=lambda: NOW), metrics


def set_job_status(kube, **status):
    kube.objects[JOB]["status"] = status


def test_first_reconcile_creates_every_child_once():
    kube, rec, _ = setup()
    rec.reconcile("ml-team", "facts-sft")
    kinds = sorted(o["kind"] for p, o in kube.objects.items() if not p.startswith(FTJ) and o["kind"] != "Event")
    assert kinds == ["ConfigMap", "Job", "NetworkPolicy", "Role", "RoleBinding", "Service", "ServiceAccount"]
    ftj = kube.objects[FTJ]
    assert ftj["status"]["phase"] == "Pending"
    assert any(o["kind"] == "Event" and o["reason"] == "Created" for o in kube.objects.values())
    rec.reconcile("ml-team", "facts-sft")  # sees the Job: "0/2 workers ready"
    # Another reconcile, and one by a freshly started operator, write nothing.
    for r in (rec, Reconciler(kube, Metrics(), clock=lambda: NOW)):
        kube.calls.clear()
        r.reconcile("ml-team", "facts-sft")
        assert kube.writes() == [], kube.writes()


def test_status_patch_never_touches_training():
    kube, rec, _ = setup()
    rec.reconcile("ml-team", "facts-sft")
    kube.objects[FTJ]["status"]["training"] = {"step": 10, "totalSteps": 100, "progress": "10%"}
    set_job_status(kube, active=2, ready=2)
    rec.reconcile("ml-team", "facts-sft")
    st = kube.objects[FTJ]["status"]
    assert st["phase"] == "Running" and st["training"]["step"] == 10


def test_group_restart_recreates_the_job_with_the_next_attempt():
    kube, rec, metrics = setup()
    rec.reconcile("ml-team", "facts-sft")
    set_job_status(kube, active=0, failed=1, conditions=[{"type": "Failed", "status": "True", "message": "exit 1"}])
    rec.reconcile("ml-team", "facts-sft")  # decides the restart, deletes the Job
    assert kube.objects[FTJ]["status"]["restarts"] == 1
    assert JOB not in kube.objects
    rec.reconcile("ml-team", "facts-sft")  # recreates it
    job = kube.objects[JOB]
    assert job["metadata"]["labels"][contract.LABEL_ATTEMPT] == "1"
    assert job["spec"]["template"]["metadata"]["labels"][contract.LABEL_ATTEMPT] == "1"
    text = generate_latest(metrics.registry).decode()
    assert f'{contract.OP_GROUP_RESTARTS}_total{{job="facts-sft",namespace="ml-team"}} 1.0' in text


def test_guardrail_edit_updates_the_config_map():
    kube, rec, _ = setup()
    rec.reconcile("ml-team", "facts-sft")
    kube.patch(FTJ, {"spec": {"guardrails": {"maxDriftKL": 0.25}}})
    rec.reconcile("ml-team", "facts-sft")
    cm = kube.objects[path("ConfigMap", "ml-team", "facts-sft-config")]
    assert yaml.safe_load(cm["data"][contract.CONFIG_FILE])["spec"]["guardrails"]["maxDriftKL"] == 0.25


def test_figures_are_mirrored_and_removed_with_the_job():
    kube, rec, metrics = setup()
    rec.reconcile("ml-team", "facts-sft")
    body = kube.get(FTJ)
    body["status"]["training"] = {"step": 50, "totalSteps": 200, "metrics": {"hallucinationRate": 0.12,
                                                                             "driftKL": 0.3}}
    metrics.observe(body)
    text = generate_latest(metrics.registry).decode()
    labels = 'job="facts-sft",method="sft",namespace="ml-team"'
    assert f"tuneguard_job_hallucination_rate{{{labels}}} 0.12" in text
    assert f"tuneguard_job_drift_kl{{{labels}}} 0.3" in text
    assert f"tuneguard_job_progress_ratio{{{labels}}} 0.25" in text
    assert 'tuneguard_operator_jobs{method="sft",phase="Pending"} 1.0' in text
    rec.forget("ml-team", "facts-sft")
    text = generate_latest(metrics.registry).decode()
    assert "facts-sft" not in text
    assert 'tuneguard_operator_jobs{method="sft",phase="Pending"} 0.0' in text


def test_deleted_job_is_forgotten():
    kube, rec, _ = setup()
    rec.reconcile("ml-team", "facts-sft")
    del kube.objects[FTJ]
    assert rec.reconcile("ml-team", "facts-sft") is None


def test_the_echo_of_the_operators_own_status_write_is_not_reconciled():
    from tuneguard_operator.handlers import Controller

    kube, rec, metrics = setup()
    ctl = Controller(rec, metrics)
    rec.reconcile("ml-team", "facts-sft")
    ours = kube.get(FTJ)
    ctl.on_ftj_event({"type": "MODIFIED", "object": ours})
    assert len(ctl.queue) == 0
    kube.patch(FTJ + "/status", {"status": {"training": {"step": 1}}})  # the trainer writes
    ctl.on_ftj_event({"type": "MODIFIED", "object": kube.get(FTJ)})
    assert len(ctl.queue) == 1


def test_without_permission_to_list_pods_the_job_still_runs():
    from tuneguard.kube import ApiError

    kube, rec, _ = setup()

    def forbidden(p, selector):
        raise ApiError(403, "Forbidden", {"message": "pods is forbidden"})

    kube.list = forbidden
    rec.reconcile("ml-team", "facts-sft")
    set_job_status(kube, active=2, ready=1)
    rec.reconcile("ml-team", "facts-sft")
    assert kube.objects[FTJ]["status"]["phase"] == "Pending"
    set_job_status(kube, active=2, ready=2)
    rec.reconcile("ml-team", "facts-sft")
    assert kube.objects[FTJ]["status"]["phase"] == "Running"


def _worker_pod(kube, name, node, deleted_at=None, grace=None):
    meta = {"name": name, "namespace": "ml-team",
            "labels": {contract.LABEL_JOB: "facts-sft", contract.LABEL_ROLE: "worker"}}
    if deleted_at is not None:
        meta["deletionTimestamp"] = deleted_at
        meta["deletionGracePeriodSeconds"] = 30 if grace is None else grace
    kube.create(path("Pod", "ml-team"), {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                                         "spec": {"nodeName": node}})


def _node(kube, name, ready):
    kube.objects[path("Node", None, name)] = {"kind": "Node", "metadata": {"name": name},
                                              "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def test_a_worker_stuck_terminating_on_a_lost_node_is_force_deleted_and_the_group_restarts():
    kube, rec, metrics = setup()  # runPolicy.forceDeleteAfterSeconds: 60 (the default)
    rec.reconcile("ml-team", "facts-sft")
    _node(kube, "gpu-a", "True")
    _node(kube, "gpu-b", "Unknown")
    _worker_pod(kube, "facts-sft-worker-0", "gpu-a")
    _worker_pod(kube, "facts-sft-worker-1", "gpu-b", deleted_at="2025-12-31T23:58:00Z")  # grace ended 120 s ago
    _worker_pod(kube, "facts-sft-worker-2", "gpu-a", deleted_at="2025-12-31T23:58:00Z")  # its kubelet is alive
    set_job_status(kube, active=2, ready=1, terminating=2)
    kube.calls.clear()
    rec.reconcile("ml-team", "facts-sft")
    st = kube.objects[FTJ]["status"]
    assert (st["phase"], st["reason"], st["disruptions"], st["restarts"]) == ("Restarting", "WorkerDisrupted", 1, 0)
    assert "facts-sft-worker-1 on node gpu-b (Ready=Unknown)" in st["message"]
    force = [c for c in kube.calls if c[0] == "DELETE" and len(c) == 3]
    assert force == [("DELETE", path("Pod", "ml-team", "facts-sft-worker-1"), 0)]
    assert JOB not in kube.objects  # the group restart
    reasons = [o["reason"] for o in kube.objects.values() if o.get("kind") == "Event"]
    assert "PodForceDeleted" in reasons and "WorkerDisrupted" in reasons
    text = generate_latest(metrics.registry).decode()
    assert f'{contract.OP_PODS_FORCE_DELETED}_total{{namespace="ml-team"}} 1.0' in text


def test_a_worker_on_a_vanished_node_is_force_deleted_once_it_falls_due():
    kube, rec, _ = setup()
    rec.reconcile("ml-team", "facts-sft")
    _worker_pod(kube, "facts-sft-worker-1", "gone-node", deleted_at="2025-12-31T23:59:05Z")  # 55 s past its grace
    set_job_status(kube, active=2, ready=1, terminating=1)
    kube.calls.clear()
    assert rec.reconcile("ml-team", "facts-sft") == 5.0  # looks again when it falls due (sooner than the poll)
    assert not [c for c in kube.calls if c[0] == "DELETE"]
    # A pod already force-deleted (waiting for its finalizer) is not deleted or told again.
    kube.objects[path("Pod", "ml-team", "facts-sft-worker-1")]["metadata"].update(
        deletionTimestamp="2025-12-31T23:50:00Z", deletionGracePeriodSeconds=0)
    kube.calls.clear()
    rec.reconcile("ml-team", "facts-sft")
    assert not [c for c in kube.calls if c[0] == "DELETE"]


def test_a_healthy_job_reads_no_nodes_and_without_get_nodes_nothing_is_force_deleted():
    from tuneguard.kube import ApiError

    kube, rec, _ = setup()
    rec.reconcile("ml-team", "facts-sft")
    set_job_status(kube, active=2, ready=2)
    kube.calls.clear()
    rec.reconcile("ml-team", "facts-sft")
    assert not [c for c in kube.calls if "/nodes" in c[1] or c[0] == "LIST"]
    get = kube.get

    def no_nodes(p):
        if "/nodes/" in p:
            raise ApiError(403, "Forbidden", {"message": "nodes is forbidden"})
        return get(p)

    kube.get = no_nodes
    _worker_pod(kube, "facts-sft-worker-1", "gpu-b", deleted_at="2025-12-31T23:00:00Z")
    set_job_status(kube, active=2, ready=1, terminating=1)
    rec.reconcile("ml-team", "facts-sft")
    assert kube.objects[FTJ]["status"]["phase"] != "Restarting"
    assert path("Pod", "ml-team", "facts-sft-worker-1") in kube.objects


def test_a_child_the_api_server_refuses_fails_the_job_once_instead_of_retrying_forever():
    """Fuzzing found it: the schema let a priorityClassName through that the Job's own validation refuses (422)."""
    from tuneguard.kube import ApiError

    kube, rec, _ = setup()
    create = kube.create

    def refuse_jobs(p, body):
        if body["kind"] == "Job":
            raise ApiError(422, "Unprocessable Entity", {"message": 'Job.batch "facts-sft-worker" is invalid: '
                                                                   "spec.template.spec.priorityClassName: Invalid value"})
        return create(p, body)

    kube.create = refuse_jobs
    assert rec.reconcile("ml-team", "facts-sft") is None  # no exception: nothing for the queue to retry
    st = kube.objects[FTJ]["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert "refused the worker Job facts-sft-worker" in st["message"] and "priorityClassName" in st["message"]
    kube.calls.clear()
    rec.reconcile("ml-team", "facts-sft")
    assert kube.writes() == []  # Failed is final: no create tried again, nothing rewritten


def test_with_the_watch_cache_a_reconcile_reads_nothing_the_watches_and_its_own_writes_told_it():
    from tuneguard_operator.cache import ObjectCache
    from tuneguard_operator.handlers import Controller

    kube = FakeKube()
    doc = yaml.safe_load((ROOT / "examples" / "multinode-sft.yaml").read_text())
    kube.create(path("FineTuneJob", "ml-team"), doc)
    rec = Reconciler(kube, Metrics(), clock=lambda: NOW, cache=ObjectCache())
    ctl = Controller(rec, Metrics())
    ctl.on_ftj_event({"type": "ADDED", "object": kube.get(FTJ)})
    kube.calls.clear()
    rec.reconcile("ml-team", "facts-sft")  # the watch's copy, children created, the Job's answer cached
    assert ("GET", FTJ) not in kube.calls
    kube.calls.clear()
    rec.reconcile("ml-team", "facts-sft")  # its own status write's answer and the created Job: no GET at all
    assert [c for c in kube.calls if c[0] == "GET"] == []
    # the Job's watch event brings its status; an older event arriving late changes nothing
    old = kube.get(JOB)
    set_job_status(kube, active=2, ready=2)
    kube._bump(kube.objects[JOB])
    ctl.on_job_event({"type": "MODIFIED", "object": kube.get(JOB)})
    ctl.on_job_event({"type": "MODIFIED", "object": old})
    rec.reconcile("ml-team", "facts-sft")
    assert kube.objects[FTJ]["status"]["phase"] == "Running"
    ctl.on_job_event({"type": "DELETED", "object": kube.get(JOB)})
    kube.calls.clear()
    rec.reconcile("ml-team", "facts-sft")
    assert ("GET", JOB) in kube.calls  # dropped with its deletion: read again


def test_a_cache_entry_is_trusted_for_a_minute_only():
    from tuneguard_operator.cache import ObjectCache

    now = [0.0]
    cache = ObjectCache(max_age=60, clock=lambda: now[0])
    cache.put("Job", {"metadata": {"namespace": "ns", "name": "j", "resourceVersion": "5"}})
    assert cache.get("Job", "ns", "j")["metadata"]["resourceVersion"] == "5"
    now[0] = 61.0
    assert cache.get("Job", "ns", "j") is None
