"""Each policy of the FineTuneJob state machine alone, one table of cases per policy."""

from datetime import datetime, timedelta, timezone

import pytest

from tuneguard import api, contract
from tuneguard_operator.policies import deadline, group, lost_node, success, suspend, terminal, ttl, workers
from tuneguard_operator.policies.lost_node import TerminatingPod
from tuneguard_operator.policies.observed import POLL_SECONDS, STUCK_POLL_SECONDS, Observed, Verdict, rfc3339

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> str:
    return rfc3339(T0 + timedelta(seconds=seconds))


def worker_job(attempt=0, suspended=False, active=2, ready=2, conditions=(), deleting=False, finished=None,
               succeeded=0):
    """A worker Job as the API server returns it; `conditions` are (type, message[, reason]) that are True."""
    status = {"active": active, "ready": ready, "succeeded": succeeded,
              "conditions": [{"type": c[0], "status": "True", "message": c[1], **({"reason": c[2]} if c[2:] else {})}
                             for c in conditions]}
    if finished is not None:
        status["completionTime"] = finished
    metadata = {"name": "facts-sft-worker", "labels": {contract.LABEL_ATTEMPT: str(attempt)}}
    if deleting:
        metadata["deletionTimestamp"] = at(0)
    return {"metadata": metadata, "spec": {"suspend": suspended}, "status": status}


def observed(run_policy=None, **fields) -> Observed:
    """Two desired workers at T0 under the given runPolicy fields (snake_case)."""
    return Observed(now=T0, desired=2, run_policy=api.RunPolicy(**(run_policy or {})), **fields)


def verdict(phase, start=None, completion=None, requeue=None) -> Verdict:
    return Verdict(phase, "Reason", "message", restarts=0, start=start, completion=completion, requeue=requeue)


def brief(answer: Verdict | None):
    """The fields most cases check; None stays None so 'declined' is a row of its own."""
    return None if answer is None else (answer.phase, answer.reason, answer.action)


FAILED_STATUS = dict(last_phase="Failed", last_conditions=({"type": "Failed", "reason": "DeadlineExceeded",
                                                            "message": "too long"},))


@pytest.mark.parametrize("fields, expected, message", [
    (dict(last_phase=None), None, None),
    (dict(last_phase="Running"), None, None),
    (dict(last_phase="Succeeded", last_conditions=({"type": "Succeeded", "reason": "Succeeded", "message": "done"},)),
     ("Succeeded", "Succeeded", None), "done"),
    # Without its condition the phase names itself and the last message stays.
    (dict(last_phase="Failed", last_message="earlier"), ("Failed", "Failed", None), "earlier"),
    (dict(FAILED_STATUS, job=worker_job(active=2)), ("Failed", "DeadlineExceeded", "delete"), "too long"),
    (dict(FAILED_STATUS, job=worker_job(active=0)), ("Failed", "DeadlineExceeded", None), "too long"),
    (dict(FAILED_STATUS, job=worker_job(attempt=0, active=2), restarts=1), ("Failed", "DeadlineExceeded", None),
     "too long"),
    (dict(last_phase="Succeeded", job=worker_job(active=2)), ("Succeeded", "Succeeded", None), ""),
])
def test_terminal_phases_are_sticky(fields, expected, message):
    answer = terminal.sticky(observed(**fields))
    assert brief(answer) == expected
    if answer is not None:
        assert answer.message == message


@pytest.mark.parametrize("completion, expected", [(None, at(0)), (at(-30), at(-30))])
def test_an_invalid_spec_fails_and_keeps_its_completion_time(completion, expected):
    answer = terminal.invalid_spec(observed(completion=completion), "spec.x: bad")
    assert (answer.phase, answer.reason, answer.completion) == ("Failed", "InvalidSpec", expected)
    assert answer.message == "the spec does not validate: spec.x: bad"


@pytest.mark.parametrize("fields, expected", [
    (dict(job=None), None),
    (dict(job=worker_job()), None),
    (dict(job=worker_job(conditions=[("Failed", "")])), None),
    (dict(job=worker_job(attempt=0, conditions=[("Complete", "")]), restarts=1), None),  # an earlier attempt's
    (dict(job=worker_job(conditions=[("Complete", "")], deleting=True)), None),
    (dict(job=worker_job(conditions=[("Complete", "")], finished=at(-5))), ("Succeeded", at(-5))),
    (dict(job=worker_job(conditions=[("Complete", "")])), ("Succeeded", at(0))),
])
def test_success_is_the_current_job_completing(fields, expected):
    answer = success.completed(observed(**fields))
    assert (None if answer is None else (answer.phase, answer.completion)) == expected
    if answer is not None:
        assert answer.message == "all 2 workers completed"


@pytest.mark.parametrize("run_policy, fields, expected", [
    ({}, dict(start=at(-1000), job=worker_job()), None),
    ({"active_deadline_seconds": 30}, dict(start=None, job=worker_job()), None),
    ({"active_deadline_seconds": 30}, dict(start=at(-29), job=worker_job()), None),
    ({"active_deadline_seconds": 30, "suspend": True}, dict(start=at(-100), job=worker_job()), None),
    ({"active_deadline_seconds": 30}, dict(start=at(-30), job=worker_job()), ("Failed", "DeadlineExceeded", "delete")),
    ({"active_deadline_seconds": 30}, dict(start=at(-31), job=None), ("Failed", "DeadlineExceeded", None)),
    ({"active_deadline_seconds": 30}, dict(start=at(-31), job=worker_job(deleting=True)),
     ("Failed", "DeadlineExceeded", None)),
])
def test_the_active_deadline(run_policy, fields, expected):
    answer = deadline.exceeded(observed(run_policy, **fields))
    assert brief(answer) == expected
    if answer is not None:
        assert answer.completion == at(0) and "(30s)" in answer.message


@pytest.mark.parametrize("run_policy, given, expected", [
    ({}, verdict("Running", start=at(-10)), None),
    ({"active_deadline_seconds": 30}, verdict("Running"), None),
    ({"active_deadline_seconds": 30, "suspend": True}, verdict("Suspended", start=at(-10)), None),
    ({"active_deadline_seconds": 30}, verdict("Succeeded", start=at(-10)), None),
    ({"active_deadline_seconds": 30}, verdict("Running", start=at(-10)), 20),
    ({"active_deadline_seconds": 30}, verdict("Pending", start=at(-10), requeue=5.0), 5.0),
    ({"active_deadline_seconds": 30}, verdict("Pending", start=at(-10), requeue=25.0), 20),
    ({"active_deadline_seconds": 30}, verdict("Running", start=at(-100)), 0.5),  # never a busy loop
])
def test_the_deadline_sets_when_to_look_again(run_policy, given, expected):
    assert deadline.requeue(observed(run_policy), given).requeue == expected


@pytest.mark.parametrize("run_policy, fields, expected, start", [
    ({}, dict(job=worker_job()), None, None),
    ({}, dict(), ("Pending", "Created", "create"), at(0)),
    ({}, dict(start=at(-5)), ("Pending", "Created", "create"), at(-5)),
    ({}, dict(queue="gpu"), ("Pending", "Created", "create"), None),  # Kueue admits it first
    ({"suspend": True}, dict(), ("Suspended", "Suspended", "create"), None),
    ({}, dict(restarts=1, last_phase="Restarting"), ("Restarting", "WorkerFailed", "create"), at(0)),
    ({}, dict(restarts=1, last_phase=None), ("Restarting", "WorkerFailed", "create"), at(0)),
    ({}, dict(restarts=1, last_phase="Suspended"), ("Pending", "Created", "create"), at(0)),
])
def test_a_missing_job_is_created(run_policy, fields, expected, start):
    answer = group.create_missing(observed(run_policy, **fields))
    assert brief(answer) == expected
    if answer is not None:
        assert answer.start == start and answer.requeue is None


STALE = worker_job(attempt=0)


@pytest.mark.parametrize("run_policy, fields, expected", [
    ({}, dict(job=worker_job(attempt=1), restarts=1), None),
    ({}, dict(job=STALE, restarts=1, last_phase="Restarting"), ("Restarting", "WorkerFailed", "delete")),
    ({}, dict(job=STALE, restarts=1, last_phase="Running"), ("Restarting", "WorkerFailed", "delete")),
    ({}, dict(job=STALE, restarts=1, last_phase="Suspended"), ("Suspended", "WaitingForCleanup", "delete")),
    ({}, dict(job=worker_job(deleting=True)), ("Pending", "WaitingForCleanup", None)),
    ({}, dict(job=worker_job(deleting=True), last_phase="Running"), ("Running", "WaitingForCleanup", None)),
    ({"suspend": True}, dict(job=STALE, restarts=1, last_phase="Restarting"), ("Suspended", "Suspended", "delete")),
])
def test_a_stale_job_is_deleted_and_awaited(run_policy, fields, expected):
    answer = group.clear_stale(observed(run_policy, **fields))
    assert brief(answer) == expected
    if answer is not None:
        assert answer.requeue == POLL_SECONDS


@pytest.mark.parametrize("fields, expected, restarts, announce", [
    (dict(job=worker_job()), None, None, None),
    (dict(job=worker_job(conditions=[("Failed", "exit 1")])), ("Restarting", "WorkerFailed", "delete"), 1, False),
    (dict(job=worker_job(attempt=1, conditions=[("Failed", "exit 1")]), restarts=1, last_phase="Restarting"),
     ("Restarting", "WorkerFailed", "delete"), 2, True),
    (dict(job=worker_job(attempt=2, conditions=[("Failed", "exit 1")]), restarts=2),
     ("Failed", "BackoffLimitExceeded", None), 2, False),
])
def test_a_failed_group_restarts_within_the_backoff_limit(fields, expected, restarts, announce):
    answer = group.restart_failed(observed({"backoff_limit": 2}, **fields))
    assert brief(answer) == expected
    if answer is not None:
        assert (answer.restarts, answer.announce) == (restarts, announce)
        assert answer.message.startswith("worker failed: exit 1; ")
        assert answer.completion == (at(0) if answer.phase == "Failed" else None)


# How the Job controller says its DisruptionTarget rule (render.worker_job's rule 0) failed it.
DISRUPTED = ("Failed", "Pod ns/facts-sft-worker-1-x has condition DisruptionTarget matching FailJob rule at index 0",
             "PodFailurePolicy")


@pytest.mark.parametrize("fields, restarts, disruptions", [
    (dict(job=worker_job(conditions=[DISRUPTED])), 0, 1),
    # at the backoff limit a disruption still restarts the group: it spends nothing
    (dict(job=worker_job(attempt=2, conditions=[DISRUPTED]), restarts=2), 2, 1),
    (dict(job=worker_job(attempt=3, conditions=[DISRUPTED]), restarts=2, disruptions=1), 2, 2),
])
def test_a_disruption_restarts_the_group_without_spending_the_backoff_limit(fields, restarts, disruptions):
    answer = group.restart_failed(observed({"backoff_limit": 2}, **fields))
    assert brief(answer) == ("Restarting", "WorkerDisrupted", "delete")
    assert (answer.restarts, answer.disruptions) == (restarts, disruptions)
    assert answer.message.startswith("worker disrupted (preemption, eviction or node drain): Pod ns/")
    assert answer.message.endswith(f"not counted against backoffLimit (disruption {disruptions})")


def test_a_failure_that_is_not_a_disruption_still_counts():
    exit_code = ("Failed", "Container trainer for pod ns/x failed with exit code 1 matching FailJob rule at index 1",
                 "PodFailurePolicy")
    answer = group.restart_failed(observed(job=worker_job(conditions=[exit_code])))
    assert (answer.reason, answer.restarts, answer.disruptions) == ("WorkerFailed", 1, 0)


def test_the_attempt_counts_disruptions_too():
    assert observed(job=worker_job(attempt=1), disruptions=1).current
    assert not observed(job=worker_job(attempt=1), restarts=1, disruptions=1).current  # a restart since: stale
    # the group comes back as a restart, its reason kept
    answer = group.create_missing(observed(disruptions=1, last_phase="Restarting", last_reason="WorkerDisrupted"))
    assert brief(answer) == ("Restarting", "WorkerDisrupted", "create")
    assert answer.message == "starting the group again (restart 0 of at most 3, after 1 disruption(s) not counted)"


@pytest.mark.parametrize("condition, text", [
    (("Failed", "pod x exited 137"), "worker failed: pod x exited 137"),
    (("Failed", ""), "worker failed: a worker failed"),
])
def test_the_failure_message_says_what_failed(condition, text):
    answer = group.restart_failed(observed(job=worker_job(conditions=[condition])))
    assert answer.message.startswith(text + "; restarting the whole group (restart 1 of at most 3)")


@pytest.mark.parametrize("suspended, job_suspended, queue, active, expected, message", [
    (False, False, None, 2, None, None),
    (False, False, "gpu", 2, None, None),
    (True, False, None, 2, ("Suspended", "Suspended", "suspend"), "suspended: stopping 2 workers"),
    (True, True, None, 0, ("Suspended", "Suspended", None), "suspended: no workers run"),
    (False, True, None, 0, ("Pending", "Resumed", "resume"), "resumed: starting the workers again"),
    (False, True, "gpu", 0, ("Pending", "Queued", None), "waiting for Kueue to admit the job (queue gpu)"),
])
def test_suspend_resume_and_kueue(suspended, job_suspended, queue, active, expected, message):
    seen = observed({"suspend": suspended}, queue=queue, start=at(-60),
                    job=worker_job(suspended=job_suspended, active=active, ready=0))
    answer = suspend.suspend_or_queue(seen)
    assert brief(answer) == expected
    if answer is not None:
        assert answer.message == message
        assert answer.start == (at(0) if answer.reason == "Resumed" else at(-60))  # resume restarts the clock


@pytest.mark.parametrize("ready, active, last_phase, issues, expected, requeue, message", [
    (2, 2, "Pending", None, ("Running", "WorkersReady"), None, "all 2 workers are ready"),
    # rank 1 finished while rank 0 writes the report (seen on real pods): still Running, not Pending
    ((1, 1), 1, "Running", None, ("Running", "WorkersReady"), None, "1/2 workers finished, 1 running"),
    ((0, 1), 1, "Running", None, ("Running", "WorkersReady"), None, "0/2 workers ready, 1 running"),
    (1, 2, "Running", None, ("Running", "WorkersReady"), None, "1/2 workers ready, 2 running"),
    (1, 2, "Pending", None, ("Pending", "WaitingForWorkers"), STUCK_POLL_SECONDS,
     "1/2 workers ready, 2 created; waiting for the rest to be scheduled and start"),
    (0, 1, "Running", None, ("Pending", "WaitingForWorkers"), STUCK_POLL_SECONDS,
     "0/2 workers ready, 1 created; waiting for the rest to be scheduled and start"),
    (0, 2, "Restarting", None, ("Restarting", "WorkerFailed"), STUCK_POLL_SECONDS,
     "0/2 workers ready, 2 created; waiting for the rest to be scheduled and start"),
    (0, 2, "Pending", [f"w{rank}: ErrImagePull" for rank in range(6)], ("Pending", "WaitingForWorkers"),
     STUCK_POLL_SECONDS, "0/2 workers ready, 2 created; waiting for the rest to be scheduled and start; "
     "w0: ErrImagePull; w1: ErrImagePull; w2: ErrImagePull; w3: ErrImagePull"),
])
def test_running_and_waiting_for_workers(ready, active, last_phase, issues, expected, requeue, message):
    ready, succeeded = ready if isinstance(ready, tuple) else (ready, 0)
    answer = workers.running(observed(job=worker_job(active=active, ready=ready, succeeded=succeeded),
                                      last_phase=last_phase, issues=issues))
    assert ((answer.phase, answer.reason), answer.requeue, answer.message) == (expected, requeue, message)
    assert answer.start == at(0)


@pytest.mark.parametrize("start", [None, at(-60)])
def test_running_starts_the_clock_once(start):
    assert workers.running(observed(job=worker_job(), start=start)).start == (start or at(0))


@pytest.mark.parametrize("ttl_seconds, given, requeue, delete_self", [
    (None, verdict("Succeeded", completion=at(-10)), None, False),
    (60, verdict("Running", completion=at(-10)), None, False),
    (60, verdict("Failed", completion=None), None, False),
    (60, verdict("Succeeded", completion=at(-10)), 50, False),
    (60, verdict("Failed", completion=at(-60)), None, True),
    (0, verdict("Succeeded", completion=at(0)), None, True),
])
def test_ttl_after_finished(ttl_seconds, given, requeue, delete_self):
    answer = ttl.after_finished(observed({"ttl_seconds_after_finished": ttl_seconds}), given)
    assert (answer.requeue, answer.delete_self) == (requeue, delete_self)


def stuck(node_ready="Unknown", seconds_past_grace=90, forced=False, node="gpu-b"):
    return TerminatingPod("w-1", "uid-1", node, node_ready, T0 - timedelta(seconds=seconds_past_grace), forced=forced)


@pytest.mark.parametrize("pod, fields, expected", [
    (stuck(), {}, ("Restarting", "WorkerDisrupted", "delete")),
    (stuck(node_ready=None), {}, ("Restarting", "WorkerDisrupted", "delete")),  # the node object is gone
    (stuck(node_ready="False"), {}, ("Restarting", "WorkerDisrupted", "delete")),
    (stuck(node_ready="True"), {}, None),  # a live kubelet will confirm: wait
    (stuck(seconds_past_grace=59), {}, None),  # not yet due (forceDeleteAfterSeconds 60)
    (stuck(forced=True), {}, None),  # force-deleted already
    (stuck(node=None), {}, None),  # never scheduled: nothing runs anywhere
    (stuck(), dict(job_conditions=[("Complete", "")]), None),  # the group finished: nothing to restart
    (stuck(), dict(attempt=0, restarts=1), None),  # a stale Job: clear_stale deletes it
])
def test_a_worker_lost_with_its_node_restarts_the_group_as_a_disruption(pod, fields, expected):
    job = worker_job(attempt=fields.pop("attempt", 0), conditions=fields.pop("job_conditions", ()))
    answer = lost_node.restart_stuck(observed(job=job, terminating=(pod,), **fields))
    assert brief(answer) == expected
    if answer:
        assert (answer.disruptions, answer.restarts) == (1, 0)
        assert answer.message.startswith("worker lost with its node: w-1 on node gpu-b (")


def test_force_deletes_fall_due_past_the_grace_period():
    pods = (stuck(seconds_past_grace=10), stuck(seconds_past_grace=70), stuck(node_ready="True", seconds_past_grace=500))
    assert [p.deletion for p in lost_node.overdue(pods, 60, T0)] == [pods[1].deletion]
    assert lost_node.next_due(pods, 60, T0) == 50.0
    assert lost_node.overdue(pods, 0, T0) == list(pods[:2])


def workload(active=True, **conditions):
    """Kueue's Workload: conditions as type=(status, reason, message)."""
    return {"metadata": {"name": "job-facts-sft-worker-1a2b3"}, "spec": {"active": active},
            "status": {"conditions": [{"type": t, "status": st, "reason": r, "message": m}
                                      for t, (st, r, m) in conditions.items()]}}


@pytest.mark.parametrize("suspended, job_suspended, wl, expected, message", [
    # runPolicy.suspend: Kueue's own way to stop a job, never the Job's spec.suspend (Kueue would undo it)
    (True, False, workload(), ("Suspended", "Suspended", "deactivate"), "deactivating Kueue's workload"),
    (True, True, workload(active=False), ("Suspended", "Suspended", None), "is inactive; Kueue is stopping 2 workers"),
    (True, True, None, ("Suspended", "Suspended", None), "waiting for Kueue's workload"),
    (False, True, workload(active=False), ("Pending", "Resumed", "activate"), "activating Kueue's workload"),
    (False, True, workload(QuotaReserved=("False", "Pending", "insufficient unused quota for nvidia.com/gpu, 8 more needed")),
     ("Pending", "Queued", None), "(queue team): insufficient unused quota for nvidia.com/gpu, 8 more needed"),
    (False, True, workload(Evicted=("True", "Preempted", "Preempted to accommodate a higher priority Workload")),
     ("Pending", "Preempted", None), "preempted by Kueue (Preempted to accommodate a higher priority Workload)"),
    (False, True, workload(Evicted=("True", "PodsReadyTimeout", "not all pods ready")),
     ("Pending", "Requeued", None), "evicted by Kueue, PodsReadyTimeout"),
    (False, False, workload(Admitted=("True", "Admitted", "")), None, None),  # admitted: the workers run
])
def test_under_kueue_the_operator_never_writes_the_jobs_suspend(suspended, job_suspended, wl, expected, message):
    seen = observed({"suspend": suspended}, job=worker_job(suspended=job_suspended), queue="team", workload=wl)
    answer = suspend.suspend_or_queue(seen)
    assert brief(answer) == expected
    assert answer is None or message in answer.message
    assert answer is None or answer.action not in ("suspend", "resume")
