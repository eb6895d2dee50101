"""runPolicy.suspend: a suspended job keeps its Job with no pods; with a queueName, Kueue starts and stops
the Job instead (kueue.py)."""

from __future__ import annotations

from typing import Optional

from . import kueue
from .observed import PENDING, SUSPENDED, Observed, Verdict, worker_counts

IDLE_MESSAGE = "suspended: no workers run"


def idle(seen: Observed, **changes) -> Verdict:
    """Suspended with no workers to stop."""
    return seen.verdict(SUSPENDED, "Suspended", IDLE_MESSAGE, **changes)


def suspend_or_queue(seen: Observed) -> Optional[Verdict]:
    """For the current Job: suspend it, resume it, or wait for Kueue; None when it should just run."""
    job_suspended = bool((seen.job.get("spec") or {}).get("suspend"))
    if seen.queue:  # Kueue starts and stops the Job (kueue.py)
        return kueue.suspended(seen) if seen.run_policy.suspend else kueue.waiting(seen)
    if seen.run_policy.suspend:
        active = worker_counts(seen.desired, seen.job)["active"]
        return seen.verdict(SUSPENDED, "Suspended",
                            f"suspended: stopping {active} workers" if active else IDLE_MESSAGE,
                            action=None if job_suspended else "suspend")
    if job_suspended:
        # As for Jobs: the deadline clock starts again on resume.
        return seen.verdict(PENDING, "Resumed", "resumed: starting the workers again",
                            action="resume", start=seen.now_s)
    return None
