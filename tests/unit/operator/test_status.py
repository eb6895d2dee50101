"""The FineTuneJob state machine (status.decide): every transition, no API server."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

from tuneguard.validation import parse_job
from tuneguard import contract
from tuneguard_operator.status import decide, rfc3339

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def body(status=None, **run_policy):
    doc = yaml.safe_load((ROOT / "examples" / "multinode-sft.yaml").read_text())
    doc["spec"]["runPolicy"].update(run_policy)
    doc["metadata"].update(uid="u1", generation=1)
    if status is not None:
        doc["status"] = status
    return doc


def parsed(b):
    return parse_job({k: b[k] for k in ("apiVersion", "kind", "spec")} | {"metadata": {
        "name": b["metadata"]["name"], "namespace": b["metadata"]["namespace"]}})


def job(attempt=0, suspend=False, active=2, ready=2, succeeded=0, failed=0, conditions=(), deleting=False):
    j = {"metadata": {"name": "facts-sft-worker", "uid": "j1", "labels": {contract.LABEL_ATTEMPT: str(attempt)}},
         "spec": {"suspend": suspend},
         "status": {"active": active, "ready": ready, "succeeded": succeeded, "failed": failed,
                    "conditions": [{"type": t, "status": "True", "message": m} for t, m in conditions]}}
    if deleting:
        j["metadata"]["deletionTimestamp"] = rfc3339(T0)
    return j


def step(b, j, now=T0):
    """One reconcile: decide, then write the status the way the operator does (the merge patch)."""
    plan = decide(b, parsed(b), j, now)
    old = b.get("status") or {}
    b = dict(b, status={**old, **plan.patch(old)})
    return b, plan


def cond(status, type_):
    return next((c for c in status["conditions"] if c["type"] == type_), None)


def test_new_job_creates_the_worker_job_and_is_pending():
    b, plan = step(body(), None)
    assert plan.job_action == "create"
    assert plan.status["phase"] == "Pending"
    assert cond(plan.status, "Created")["status"] == "True"
    assert plan.status["startTime"] == rfc3339(T0)
    assert plan.status["observedGeneration"] == 1
    assert [e.reason for e in plan.events] == ["Created"]
    assert b["status"]["reason"] == "Created"  # every owned field reaches the patch


def test_running_when_all_workers_ready_and_no_event_when_nothing_changes():
    b, _ = step(body(), None)
    b, plan = step(b, job(active=2, ready=1))
    assert plan.status["phase"] == "Pending" and plan.events == []
    assert plan.status["workers"] == {"desired": 2, "active": 2, "ready": 1, "succeeded": 0, "failed": 0}
    b, plan = step(b, job(active=2, ready=2))
    assert plan.status["phase"] == "Running"
    assert cond(plan.status, "Running")["status"] == "True"
    assert [e.reason for e in plan.events] == ["WorkersReady"]
    b2, plan = step(b, job(active=2, ready=2))
    assert plan.events == [] and plan.patch(b["status"]) == {}  # level-based: idempotent


def test_worker_failure_restarts_the_group_then_fails_past_backoff():
    b, _ = step(body(backoffLimit=1), None)
    b, _ = step(b, job())
    failed = job(active=0, ready=0, failed=1, conditions=[("Failed", "pod x failed with exit code 1")])
    b, plan = step(b, failed)
    assert plan.job_action == "delete"
    assert plan.status["phase"] == "Restarting" and plan.status["restarts"] == 1
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "WorkerFailed")]
    assert "exit code 1" in plan.status["message"]
    # The same failed Job seen again (deletion in progress or crash before delete): never counted twice.
    b, plan = step(b, failed)
    assert plan.status["restarts"] == 1 and plan.job_action == "delete"
    b, plan = step(b, job(active=2, ready=0, deleting=True))
    assert plan.job_action is None and plan.status["restarts"] == 1
    b, plan = step(b, None)
    assert plan.job_action == "create" and plan.status["phase"] == "Restarting"
    b, plan = step(b, job(attempt=1))
    assert plan.status["phase"] == "Running"
    assert cond(plan.status, "Restarting")["status"] == "False"
    b, plan = step(b, job(attempt=1, active=0, ready=0, failed=1, conditions=[("Failed", "boom")]))
    assert plan.status["phase"] == "Failed" and plan.job_action is None
    assert cond(plan.status, "Failed")["reason"] == "BackoffLimitExceeded"
    assert plan.status["reason"] == "BackoffLimitExceeded"  # the Reason column of `kubectl get ftj -o wide`
    assert plan.status["completionTime"] == rfc3339(T0)
    b, plan = step(b, job(attempt=1, active=0, ready=0, failed=1, conditions=[("Failed", "boom")]))
    assert plan.status["phase"] == "Failed" and plan.events == []  # terminal is sticky


def test_success_and_ttl():
    b, _ = step(body(ttlSecondsAfterFinished=60), None)
    b, _ = step(b, job())
    done = job(active=0, ready=0, succeeded=2, conditions=[("Complete", "")])
    done["status"]["completionTime"] = rfc3339(T0 + timedelta(seconds=5))
    b, plan = step(b, done, T0 + timedelta(seconds=6))
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["completionTime"] == rfc3339(T0 + timedelta(seconds=5))
    assert plan.requeue_after == 59 and not plan.delete_self
    b, plan = step(b, done, T0 + timedelta(seconds=66))
    assert plan.delete_self


def test_deadline_exceeded_stops_the_workers():
    b, _ = step(body(activeDeadlineSeconds=30), None)
    b, plan = step(b, job(), T0 + timedelta(seconds=10))
    assert plan.requeue_after == 20
    b, plan = step(b, job(), T0 + timedelta(seconds=31))
    assert plan.status["phase"] == "Failed" and plan.job_action == "delete"
    assert cond(plan.status, "Failed")["reason"] == "DeadlineExceeded"
    assert plan.events[0].type == "Warning"


def test_suspend_and_resume():
    b, _ = step(body(), None)
    b, _ = step(b, job())
    b["spec"]["runPolicy"]["suspend"] = True
    b, plan = step(b, job())
    assert plan.job_action == "suspend" and plan.status["phase"] == "Suspended"
    b, plan = step(b, job(suspend=True, active=0, ready=0))
    assert plan.job_action is None and plan.events == []
    assert cond(plan.status, "Suspended")["status"] == "True"
    b["spec"]["runPolicy"]["suspend"] = False
    later = T0 + timedelta(minutes=5)
    b, plan = step(b, job(suspend=True, active=0, ready=0), later)
    assert plan.job_action == "resume" and plan.status["phase"] == "Pending"
    assert plan.status["startTime"] == rfc3339(later)  # the deadline clock restarts
    assert cond(plan.status, "Suspended") == {**cond(plan.status, "Suspended"), "status": "False", "reason": "Resumed"}
    b, plan = step(b, job(), later)
    assert plan.status["phase"] == "Running"


def test_created_suspended_never_starts_the_clock():
    b, plan = step(body(suspend=True), None)
    assert plan.job_action == "create" and plan.status["phase"] == "Suspended"
    assert plan.status["startTime"] is None


def test_guardrail_breach_from_the_trainer_becomes_a_condition():
    b, _ = step(body(), None)
    b, _ = step(b, job())
    b["status"]["training"] = {"guardrail": "breached: hallucination +0.08 > 0.05 at step 120"}
    b, plan = step(b, job())
    c = cond(plan.status, "GuardrailBreached")
    assert c["status"] == "True" and "0.08" in c["message"]
    assert [e.reason for e in plan.events] == ["GuardrailBreached"]
    assert "training" not in plan.patch(b["status"])  # never written by the operator


def test_invalid_spec_fails_without_children():
    b = body()
    plan = decide(b, None, None, T0, invalid="spec.x: bad")
    assert plan.status["phase"] == "Failed" and plan.job_action is None
    assert cond(plan.status, "Failed")["reason"] == "InvalidSpec"


def test_pending_says_why_workers_are_stuck():
    from tuneguard_operator.status import pod_issues

    pods = [
        {"metadata": {"name": "facts-sft-worker-0-abcde"}, "spec": {"hostname": "facts-sft-worker-0"},
         "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}},
        {"metadata": {"name": "facts-sft-worker-1-fghij"}, "spec": {"hostname": "facts-sft-worker-1"},
         "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff",
                                                                 "message": "Back-off pulling image"}}}]}},
        {"metadata": {"name": "ok"}, "status": {"phase": "Running"}},
    ]
    issues = pod_issues(pods)
    assert issues == ["facts-sft-worker-0: Unschedulable: 0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                      "facts-sft-worker-1: ImagePullBackOff: Back-off pulling image"]
    b, _ = step(body(), None)
    plan = decide(b, parsed(b), job(active=2, ready=0), T0, issues=issues)
    assert plan.status["phase"] == "Pending" and "Insufficient nvidia.com/gpu" in plan.status["message"]
    assert plan.requeue_after == 10.0  # nothing in the Job's status announces a scheduling change
