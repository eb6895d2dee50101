"""A job with spec.resources.queueName, under Kueue: Kueue, not the operator, starts and stops its worker Job.

Kueue's webhook creates the worker Job suspended and its controller unsuspends it when it admits the Job's
Workload; it suspends it again when it evicts the Workload (preemption by a higher-priority job, a gang whose
workers did not all become ready in waitForPodsReady's timeout). So the operator never writes the Job's
spec.suspend here (Kueue would undo it, and the two would fight): runPolicy.suspend deactivates the Workload
(spec.active: false, Kueue's own way to stop a job) and a resume activates it again. While the Job waits, the
status says why, in Kueue's words from the Workload's conditions."""

from __future__ import annotations

from typing import Optional

from .observed import PENDING, POLL_SECONDS, SUSPENDED, Observed, Verdict, worker_counts


def condition(workload: Optional[dict], type_: str) -> Optional[dict]:
    for c in ((workload or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def inactive(workload: Optional[dict]) -> bool:
    return workload is not None and (workload.get("spec") or {}).get("active") is False


def suspended(seen: Observed) -> Verdict:
    """runPolicy.suspend under Kueue: deactivate the Workload (once Kueue has made it)."""
    wl = seen.workload
    if wl is None:  # Kueue has not made it yet; the Job it suspended on creation runs nothing meanwhile
        return seen.verdict(SUSPENDED, "Suspended", "suspended: waiting for Kueue's workload to deactivate it",
                            requeue=POLL_SECONDS)
    active = worker_counts(seen.desired, seen.job)["active"]
    name = wl["metadata"]["name"]
    if not inactive(wl):
        return seen.verdict(SUSPENDED, "Suspended", f"suspended: deactivating Kueue's workload {name}",
                            action="deactivate")
    return seen.verdict(SUSPENDED, "Suspended", f"suspended: Kueue's workload {name} is inactive; "
                        + (f"Kueue is stopping {active} workers" if active else "no workers run"),
                        requeue=POLL_SECONDS if active else None)


def waiting(seen: Observed) -> Optional[Verdict]:
    """The Job is suspended (not admitted, or evicted): say why; a deactivated Workload is activated again."""
    wl, queue = seen.workload, seen.queue
    if inactive(wl):
        return seen.verdict(PENDING, "Resumed", f"resumed: activating Kueue's workload {wl['metadata']['name']}",
                            action="activate", start=seen.now_s)
    if not (seen.job.get("spec") or {}).get("suspend"):
        return None  # admitted: the workers run
    evicted = condition(wl, "Evicted")
    if evicted and evicted.get("status") == "True" and evicted.get("reason") == "Preempted":
        return seen.verdict(PENDING, "Preempted", f"preempted by Kueue ({evicted.get('message', '')}); waits in "
                            f"queue {queue} to be admitted again, then resumes from its checkpoint; not counted "
                            "against backoffLimit", requeue=POLL_SECONDS)
    if evicted and evicted.get("status") == "True":
        return seen.verdict(PENDING, "Requeued", f"evicted by Kueue, {evicted.get('reason')}: "
                            f"{evicted.get('message', '')}; waits in queue {queue}", requeue=POLL_SECONDS)
    quota = condition(wl, "QuotaReserved")
    why = f": {quota['message']}" if quota and quota.get("status") == "False" and quota.get("message") else ""
    return seen.verdict(PENDING, "Queued", f"waiting for Kueue to admit the job (queue {queue}){why}",
                        requeue=POLL_SECONDS)
