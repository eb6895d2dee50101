"""runPolicy.suspend and Kueue: a suspended job keeps its Job with no pods; with a queueName, Kueue
(not the operator) unsuspends the Job when it admits the workload."""

from __future__ import annotations

from typing import Optional

from .observed import PENDING, SUSPENDED, Observed, Verdict, worker_counts

IDLE_MESSAGE = "suspended: no workers run"


def idle(seen: Observed, **changes) -> Verdict:
    """Suspended with no workers to stop."""
    return seen.verdict(SUSPENDED, "Suspended", IDLE_MESSAGE, **changes)


def suspend_or_queue(seen: Observed) -> Optional[Verdict]:
    """For the current Job: suspend it, resume it, or wait for Kueue; None when it should just run."""
    job_suspended = bool((seen.job.get("spec") or {}).get("suspend"))
    if seen.run_policy.suspend:
        active = worker_counts(seen.desired, seen.job)["active"]
        return seen.verdict(SUSPENDED, "Suspended",
                            f"suspended: stopping {active} workers" if active else IDLE_MESSAGE,
                            action=None if job_suspended else "suspend")
    if job_suspended and not seen.queue:
        # As for Jobs: the deadline clock starts again on resume.
        return seen.verdict(PENDING, "Resumed", "resumed: starting the workers again",
                            action="resume", start=seen.now_s)
    if job_suspended:
        return seen.verdict(PENDING, "Queued", f"waiting for Kueue to admit the job (queue {seen.queue})")
    return None
