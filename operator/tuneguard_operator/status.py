"""The FineTuneJob state machine, as one pure function over the policies in policies/.

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
from datetime import datetime
from typing import Any, Optional

from tuneguard import api

from .policies import deadline, group, lost_node, success, suspend, terminal, ttl, workers
from .policies.lost_node import TerminatingPod
from .policies.observed import (FAILED, RESTARTING, RUNNING, SUCCEEDED, SUSPENDED, TERMINAL, Observed, Verdict,
                                observe, worker_counts)
from .policies.observed import rfc3339  # noqa: F401  (reconcile and the tests take it from here)

# Status fields the operator owns; status.training belongs to the trainer and is never written here.
WARNING_REASONS = {"WorkerFailed", "WorkerDisrupted", "PodForceDeleted", "Preempted", "BackoffLimitExceeded", "DeadlineExceeded", "InvalidSpec", "GuardrailBreached"}


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: dict  # every operator-owned status field, wire names (status.training is the trainer's)
    job_action: Optional[str] = None  # create | delete | suspend | resume; deactivate | activate (Kueue's Workload)
    force_delete: list[TerminatingPod] = field(default_factory=list)  # pods stuck on a lost node
    delete_self: bool = False
    events: list[Event] = field(default_factory=list)
    requeue_after: Optional[float] = None

    def patch(self, current: dict | None) -> dict:
        """The merge patch for status: only fields that differ (None removes a field)."""
        current = current or {}
        out = {}
        for key in self.status:
            new, old = self.status.get(key), current.get(key)
            if new != old:
                out[key] = new
        return out


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
                      "ConfigMap, Service, NetworkPolicy, ServiceAccount, Role, RoleBinding and worker Job created", now, gen)
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


# The phase policies in the order they are asked; the first that answers decides, so each may assume
# that those before it declined. When none answers, the workers should be running.
PHASE_POLICIES = (
    terminal.sticky,
    success.completed,
    deadline.exceeded,
    group.create_missing,
    group.clear_stale,
    group.restart_failed,
    lost_node.restart_stuck,
    suspend.suspend_or_queue,
)


def _phase_verdict(seen: Observed) -> Verdict:
    for policy in PHASE_POLICIES:
        verdict = policy(seen)
        if verdict is not None:
            return verdict
    return workers.running(seen)


def verdict_for(seen: Observed) -> Verdict:
    """The verdict for a valid spec, with when to look again (or to delete the job) settled."""
    return deadline.requeue(seen, ttl.after_finished(seen, _phase_verdict(seen)))


def _events(old_conditions: list[dict], conds: list[dict], verdict: Verdict, old_phase: str | None,
            guardrail: str) -> list[Event]:
    events = []
    if verdict.phase != old_phase or verdict.announce:
        kind = "Warning" if verdict.reason in WARNING_REASONS else "Normal"
        events.append(Event(kind, verdict.reason, verdict.message))
    if not _breached(old_conditions) and _breached(conds):
        events.append(Event("Warning", "GuardrailBreached", guardrail))
    return events


def _breached(conds: list[dict]) -> bool:
    return any(c.get("type") == "GuardrailBreached" and c.get("status") == "True" for c in conds)


def decide(body: dict, ftj: api.FineTuneJob | None, job: dict | None, now: datetime,
           invalid: str | None = None, issues: list[str] | None = None,
           terminating: tuple[TerminatingPod, ...] = (), workload: dict | None = None) -> Plan:
    """Plan the next step for one FineTuneJob. `ftj` is None (and `invalid` says why) when the stored
    object does not validate; `invalid` with `ftj` is a spec the API server refused a child of; `job` is the worker Job as observed, or None; `issues` says why
    workers that exist are not ready (pod_issues); `terminating` lists its worker pods being deleted; `workload`
    is Kueue's Workload of the Job (queueName)."""
    gen = (body.get("metadata") or {}).get("generation")
    old = body.get("status") or {}
    training = old.get("training") or {}
    seen = observe(body, ftj, job, now, issues, terminating, workload)
    verdict = terminal.invalid_spec(seen, invalid) if ftj is None or invalid is not None else verdict_for(seen)

    old_conditions = old.get("conditions") or []
    conds = _conditions(old_conditions, verdict.phase, verdict.reason, verdict.message, seen.now_s, gen,
                        created=ftj is not None and verdict.reason != "InvalidSpec", training=training)
    # Counts come from the current attempt's Job only; a restart just decided makes this one stale.
    counted = ftj is not None and seen.current_for(verdict.restarts + verdict.disruptions)
    status: dict[str, Any] = {
        "phase": verdict.phase,
        "conditions": conds,
        "observedGeneration": gen,
        "workers": worker_counts(seen.desired, job if counted else None),
        "restarts": verdict.restarts,
        "disruptions": verdict.disruptions,
        "startTime": verdict.start,
        "completionTime": verdict.completion if verdict.phase in TERMINAL else None,
        "reason": verdict.reason,
        "message": verdict.message,
    }
    events = _events(old_conditions, conds, verdict, seen.last_phase, training.get("guardrail", ""))
    after = seen.run_policy.force_delete_after_seconds
    force = lost_node.overdue(terminating, after, now) if ftj is not None else []
    events += [Event("Warning", "PodForceDeleted", f"worker pod {p.describe()} was still Terminating "
                     f"{(now - p.deletion).total_seconds():.0f}s after its grace period (forceDeleteAfterSeconds: "
                     f"{after}); force-deleted: no kubelet is left to confirm it stopped") for p in force]
    requeue = verdict.requeue
    if ftj is not None and (due := lost_node.next_due(terminating, after, now)):
        requeue = min(requeue or due, due)
    return Plan(status=status, job_action=verdict.action, delete_self=verdict.delete_self, events=events,
                requeue_after=requeue, force_delete=force)
