"""The worker group's lifecycle: the group is one Job, restarted as a whole. Each attempt's Job
carries the attempt number (status.restarts + status.disruptions) in a label, so a restart is counted
once however often the failed Job is seen again.

A worker ended by a preemption, an eviction or a node drain (the pod's DisruptionTarget condition, which
the Job's first podFailurePolicy rule turns into a Job failure of its own) restarts the group too, but
counts in status.disruptions, not against runPolicy.backoffLimit: the job did nothing wrong."""

from __future__ import annotations

from typing import Optional

from . import suspend
from .observed import (FAILED, PENDING, POLL_SECONDS, RESTARTING, SUSPENDED, Observed, Verdict,
                       job_condition)


def create_missing(seen: Observed) -> Optional[Verdict]:
    """No worker Job: create one, suspended if the spec says so."""
    if seen.job is not None:
        return None
    run_policy = seen.run_policy
    # A queued job's clock starts when Kueue admits it, a suspended one's when it is resumed.
    start = seen.now_s if not run_policy.suspend and not seen.queue and not seen.start else seen.start
    if run_policy.suspend:
        return suspend.idle(seen, action="create", start=start)
    if seen.attempt > 0 and seen.last_phase in (RESTARTING, None):
        return seen.verdict(RESTARTING, seen.last_reason or "WorkerFailed", f"starting the group again ({_counts(seen)})",
                            action="create", start=start)
    return seen.verdict(PENDING, "Created", f"worker Job created for {seen.desired} workers",
                        action="create", start=start)


def clear_stale(seen: Observed) -> Optional[Verdict]:
    """A Job of an earlier attempt, or one being deleted: delete it, wait for it to go, then recreate."""
    if seen.current:
        return None
    changes = {"action": None if seen.deleting else "delete", "requeue": POLL_SECONDS}
    if seen.run_policy.suspend:
        return suspend.idle(seen, **changes)
    if seen.last_phase == RESTARTING or (seen.attempt > 0 and seen.last_phase != SUSPENDED):
        return seen.verdict(RESTARTING, seen.last_reason or "WorkerFailed",
                            f"stopping the previous group before starting it again ({_counts(seen)})", **changes)
    return seen.verdict(seen.last_phase or PENDING, "WaitingForCleanup", "waiting for the old worker Job to go",
                        **changes)


def _failure_text(job: dict) -> str:
    cond = job_condition(job, "Failed") or job_condition(job, "FailureTarget") or {}
    msg = cond.get("message") or cond.get("reason") or "a worker failed"
    return f"worker failed: {msg}"


def _counts(seen: Observed) -> str:
    out = f"restart {seen.restarts} of at most {seen.run_policy.backoff_limit}"
    return out + (f", after {seen.disruptions} disruption(s) not counted" if seen.disruptions else "")


def disrupted(job: dict) -> bool:
    """The Job failed through its DisruptionTarget rule (render.worker_job's first podFailurePolicy rule):
    a worker was preempted, evicted or drained, not failing."""
    cond = job_condition(job, "Failed") or {}
    return cond.get("reason") == "PodFailurePolicy" and "DisruptionTarget" in (cond.get("message") or "")


def restart_failed(seen: Observed) -> Optional[Verdict]:
    """The current Job failed: restart the whole group while runPolicy.backoffLimit allows, else fail; a
    disruption restarts it without spending backoffLimit."""
    if not job_condition(seen.job, "Failed"):
        return None
    why, limit = _failure_text(seen.job), seen.run_policy.backoff_limit
    if disrupted(seen.job):
        n = seen.disruptions + 1
        return seen.verdict(RESTARTING, "WorkerDisrupted",
                            f"{why.replace('worker failed', 'worker disrupted (preemption, eviction or node drain)', 1)}"
                            f"; restarting the whole group, not counted against backoffLimit (disruption {n})",
                            disruptions=n, action="delete", announce=seen.last_phase == RESTARTING)
    if seen.restarts >= limit:
        return seen.verdict(FAILED, "BackoffLimitExceeded",
                            f"{why}; the group was restarted {seen.restarts} times and backoffLimit is {limit}",
                            completion=seen.now_s)
    restarts = seen.restarts + 1
    # A failure during a restart changes no phase, yet deserves its Event.
    return seen.verdict(RESTARTING, "WorkerFailed",
                        f"{why}; restarting the whole group (restart {restarts} of at most {limit})",
                        restarts=restarts, action="delete", announce=seen.last_phase == RESTARTING)
