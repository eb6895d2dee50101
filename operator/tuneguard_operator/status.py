"""The FineTuneJob state machine, as one pure function.

`decide(body, ftj, job, now)` reads what exists (the FineTuneJob as stored, including the status the
operator wrote last time, and the worker Job if any) and returns a Plan: the operator's status fields
(phase, conditions, observedGeneration, workers, restarts, startTime, completionTime, message), one
action on the worker Job (create, delete, suspend, resume), whether to delete the FineTuneJob (TTL),
the Events to post, and when to look again. It never reads a clock or the API itself, so every
transition is a unit test, and it is level-based: calling it twice with the same inputs plans the same
thing, which is what makes an operator restart at any moment harmless.

The only state carried between reconciles lives in the object itself: status.restarts (the attempt the
current Job must carry in its tuneguard.io/restart-attempt label), status.startTime (the deadline
clock) and status.completionTime (the TTL clock). A Job whose attempt is older than status.restarts
is a leftover of a restart that was decided but not finished, and is deleted, never counted again.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from tuneguard import api

from .render import LABEL_ATTEMPT

PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED = api.PHASES
TERMINAL = (SUCCEEDED, FAILED)
# Status fields the operator owns; status.training belongs to the trainer and is never written here.
OWNED = ("phase", "conditions", "observedGeneration", "workers", "restarts", "startTime", "completionTime",
         "message")
WARNING_REASONS = {"WorkerFailed", "BackoffLimitExceeded", "DeadlineExceeded", "InvalidSpec", "GuardrailBreached"}
# How often to look again at a job that waits on something no watch event announces.
POLL_SECONDS = 5.0
STUCK_POLL_SECONDS = 10.0


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict  # the operator-owned status fields, wire names
    job_action: Optional[str] = None  # create | delete | suspend | resume
    delete_self: bool = False
    events: list[Event] = field(default_factory=list)
    requeue_after: Optional[float] = None

    def patch(self, current: dict | None) -> dict:
        """The merge patch for status: only fields that differ (None removes a field)."""
        current = current or {}
        out = {}
        for key in OWNED:
            new, old = self.status.get(key), current.get(key)
            if new != old:
                out[key] = new
        return out


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def job_condition(job: dict, type_: str) -> dict | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def job_attempt(job: dict) -> int:
    try:
        return int(((job.get("metadata") or {}).get("labels") or {}).get(LABEL_ATTEMPT, "0"))
    except ValueError:
        return 0


def worker_counts(desired: int, job: dict | None) -> dict:
    st = (job or {}).get("status") or {}
    return {
        "desired": desired,
        "active": int(st.get("active") or 0),
        "ready": int(st.get("ready") or 0),
        "succeeded": int(st.get("succeeded") or 0),
        "failed": int(st.get("failed") or 0),
    }


def set_condition(conds: list[dict], type_: str, status: str, reason: str, message: str, now: str,
                  generation: int | None) -> None:
    """Kubernetes condition semantics: lastTransitionTime moves only when status changes."""
    for c in conds:
        if c.get("type") == type_:
            if c.get("status") != status:
                c["lastTransitionTime"] = now
            c.update(status=status, reason=reason, message=message)
            if generation is not None:
                c["observedGeneration"] = generation
            return
    cond = {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": now}
    if generation is not None:
        cond["observedGeneration"] = generation
    conds.append(cond)


# The condition that is True in each phase (Pending has none of its own).
PHASE_CONDITION = {RUNNING: "Running", RESTARTING: "Restarting", SUSPENDED: "Suspended",
                   SUCCEEDED: "Succeeded", FAILED: "Failed"}


def _conditions(old: list[dict], phase: str, reason: str, message: str, now: str, gen: int | None,
                created: bool, training: dict) -> list[dict]:
    conds = copy.deepcopy(old or [])
    if created:
        set_condition(conds, "Created", "True", "ChildrenCreated",
                      "ConfigMap, Service, ServiceAccount, Role, RoleBinding and worker Job created", now, gen)
    active = PHASE_CONDITION.get(phase)
    for type_ in ("Running", "Restarting", "Suspended"):
        present = any(c.get("type") == type_ for c in conds)
        if type_ == active:
            set_condition(conds, type_, "True", reason, message, now, gen)
        elif present:
            off_reason = "Resumed" if type_ == "Suspended" else reason
            set_condition(conds, type_, "False", off_reason, message, now, gen)
    if active in ("Succeeded", "Failed"):
        set_condition(conds, active, "True", reason, message, now, gen)
    guard = (training or {}).get("guardrail") or ""
    if guard.lower().startswith("breached"):
        set_condition(conds, "GuardrailBreached", "True", "GuardrailBreached", guard, now, gen)
    elif any(c.get("type") == "GuardrailBreached" for c in conds):
        set_condition(conds, "GuardrailBreached", "False", "WithinBudget", guard, now, gen)
    order = {t: i for i, t in enumerate(api.CONDITION_TYPES)}
    conds.sort(key=lambda c: order.get(c.get("type"), len(order)))
    return conds


def _failure_text(job: dict) -> str:
    cond = job_condition(job, "Failed") or job_condition(job, "FailureTarget") or {}
    msg = cond.get("message") or cond.get("reason") or "a worker failed"
    return f"worker failed: {msg}"


# Container waiting reasons that leave a worker stuck until someone acts (Kubeflow users' #1 ask:
# say why a job is not running).
STUCK_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                 "CreateContainerError", "CrashLoopBackOff"}


def pod_issues(pods: list[dict]) -> list[str]:
    """Why workers are not ready, one line per stuck pod: unschedulable, image pull, bad config."""
    out = []
    for pod in sorted(pods, key=lambda p: (p.get("spec") or {}).get("hostname") or p["metadata"]["name"]):
        who = (pod.get("spec") or {}).get("hostname") or pod["metadata"]["name"]
        st = pod.get("status") or {}
        if st.get("phase") in ("Succeeded", "Failed") or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        sched = next((c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
        if sched and sched.get("status") == "False":
            out.append(f"{who}: {sched.get('reason', 'Unschedulable')}: {sched.get('message', '')}".strip())
            continue
        for cs in st.get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK_REASONS:
                out.append(f"{who}: {waiting['reason']}: {waiting.get('message', '')}".strip())
    return out


def decide(body: dict, ftj: api.FineTuneJob | None, job: dict | None, now: datetime,
           invalid: str | None = None, issues: list[str] | None = None) -> Plan:
    """Plan the next step for one FineTuneJob. `ftj` is None (and `invalid` says why) when the stored
    object does not validate; `job` is the worker Job as observed, or None; `issues` says why
    workers that exist are not ready (pod_issues)."""
    meta = body.get("metadata") or {}
    gen = meta.get("generation")
    old = body.get("status") or {}
    now_s = rfc3339(now)
    restarts = int(old.get("restarts") or 0)
    old_phase = old.get("phase")
    start = old.get("startTime")
    completion = old.get("completionTime")
    events: list[Event] = []
    action: Optional[str] = None
    requeue: Optional[float] = None
    delete_self = False
    training = old.get("training") or {}

    if ftj is None:
        desired = 0
        phase, reason, message = FAILED, "InvalidSpec", f"the spec does not validate: {invalid}"
        completion = completion or now_s
        created = False
    else:
        spec = ftj.spec
        rp = spec.run_policy
        desired = spec.resources.workers
        queue = spec.resources.queue_name
        created = True
        deleting = bool(job and (job.get("metadata") or {}).get("deletionTimestamp"))
        current = job is not None and not deleting and job_attempt(job) >= restarts

        if old_phase in TERMINAL:
            # Terminal phases are sticky; the Job is kept for its logs unless it still runs pods.
            phase = old_phase
            cond = next((c for c in old.get("conditions") or [] if c.get("type") == old_phase), {})
            reason, message = cond.get("reason", old_phase), cond.get("message", old.get("message") or "")
            if phase == FAILED and current and worker_counts(desired, job)["active"] > 0:
                action = "delete"
        elif job is not None and current and job_condition(job, "Complete"):
            phase, reason = SUCCEEDED, "Succeeded"
            message = f"all {desired} workers completed"
            completion = (job.get("status") or {}).get("completionTime") or now_s
        elif (not rp.suspend and start and rp.active_deadline_seconds is not None
              and (now - parse_time(start)).total_seconds() >= rp.active_deadline_seconds):
            phase, reason = FAILED, "DeadlineExceeded"
            message = f"the job ran longer than activeDeadlineSeconds ({rp.active_deadline_seconds}s); workers stopped"
            completion = now_s
            if job is not None and not deleting:
                action = "delete"
        elif job is None:
            action = "create"
            if rp.suspend:
                phase, reason, message = SUSPENDED, "Suspended", "suspended: no workers run"
            elif restarts > 0 and old_phase in (RESTARTING, None):
                phase, reason = RESTARTING, "WorkerFailed"
                message = f"starting the group again (restart {restarts} of at most {rp.backoff_limit})"
            else:
                phase, reason = PENDING, "Created"
                message = f"worker Job created for {desired} workers"
            if not rp.suspend and not queue and not start:
                start = now_s
        elif not current:
            # A Job from an earlier attempt (or one being deleted): wait for it to go, then recreate.
            if not deleting:
                action = "delete"
            requeue = POLL_SECONDS
            if old_phase == RESTARTING or restarts > 0 and old_phase not in (SUSPENDED,):
                phase, reason = RESTARTING, "WorkerFailed"
                message = f"stopping the previous group before restart {restarts} of at most {rp.backoff_limit}"
            else:
                phase, reason, message = old_phase or PENDING, "WaitingForCleanup", "waiting for the old worker Job to go"
            if rp.suspend:
                phase, reason, message = SUSPENDED, "Suspended", "suspended: no workers run"
        elif job_condition(job, "Failed"):
            why = _failure_text(job)
            if restarts < rp.backoff_limit:
                restarts += 1
                phase, reason = RESTARTING, "WorkerFailed"
                message = f"{why}; restarting the whole group (restart {restarts} of at most {rp.backoff_limit})"
                action = "delete"
                if old_phase == RESTARTING:  # a failure during a restart: no phase change, still an Event
                    events.append(Event("Warning", reason, message))
            else:
                phase, reason = FAILED, "BackoffLimitExceeded"
                message = (f"{why}; the group was restarted {restarts} times and backoffLimit is "
                           f"{rp.backoff_limit}")
                completion = now_s
        else:
            counts = worker_counts(desired, job)
            job_suspended = bool((job.get("spec") or {}).get("suspend"))
            if rp.suspend:
                if not job_suspended:
                    action = "suspend"
                phase, reason = SUSPENDED, "Suspended"
                message = (f"suspended: stopping {counts['active']} workers" if counts["active"]
                           else "suspended: no workers run")
            elif job_suspended and not queue:
                action = "resume"
                start = now_s  # as for Jobs: the deadline clock starts again on resume
                phase, reason, message = PENDING, "Resumed", "resumed: starting the workers again"
            elif job_suspended:
                phase, reason = PENDING, "Queued"
                message = f"waiting for Kueue to admit the job (queue {queue})"
            else:
                if not start:
                    start = now_s
                if counts["ready"] >= desired:
                    phase, reason = RUNNING, "WorkersReady"
                    message = f"all {desired} workers are ready"
                elif old_phase == RUNNING and counts["active"] >= desired:
                    phase, reason = RUNNING, "WorkersReady"
                    message = f"{counts['ready']}/{desired} workers ready, {counts['active']} running"
                else:
                    phase = RESTARTING if old_phase == RESTARTING else PENDING
                    reason = "WorkerFailed" if phase == RESTARTING else "WaitingForWorkers"
                    message = (f"{counts['ready']}/{desired} workers ready, {counts['active']} created; "
                               "waiting for the rest to be scheduled and start")
                    if issues:
                        message += "; " + "; ".join(issues[:4])
                    # Scheduling failures and image pulls change no Job status: look again.
                    requeue = STUCK_POLL_SECONDS

        if phase in TERMINAL and rp.ttl_seconds_after_finished is not None and completion:
            left = (parse_time(completion) - now).total_seconds() + rp.ttl_seconds_after_finished
            if left <= 0:
                delete_self = True
            else:
                requeue = left
        elif (phase not in TERMINAL and not rp.suspend and start and rp.active_deadline_seconds is not None):
            left = (parse_time(start) - now).total_seconds() + rp.active_deadline_seconds
            requeue = max(min(left, requeue or left), 0.5)

    if phase != old_phase:
        events.append(Event("Warning" if reason in WARNING_REASONS else "Normal", reason, message))
    conds = _conditions(old.get("conditions") or [], phase, reason, message, now_s, gen, created, training)
    was_breached = any(c.get("type") == "GuardrailBreached" and c.get("status") == "True"
                       for c in old.get("conditions") or [])
    if not was_breached and any(c.get("type") == "GuardrailBreached" and c.get("status") == "True" for c in conds):
        events.append(Event("Warning", "GuardrailBreached", training.get("guardrail", "")))

    counts_job = job if (job is not None and ftj is not None and job_attempt(job) >= restarts
                         and not (job.get("metadata") or {}).get("deletionTimestamp")) else None
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conds,
        "observedGeneration": gen,
        "workers": worker_counts(desired, counts_job),
        "restarts": restarts,
        "startTime": start,
        "completionTime": completion if phase in TERMINAL else None,
        "message": message,
    }
    return Plan(status=status, job_action=action, delete_self=delete_self, events=events, requeue_after=requeue)
