"""The current Job runs unsuspended: Running once every worker is ready, otherwise say what is missing."""

from __future__ import annotations

from .observed import PENDING, RESTARTING, RUNNING, STUCK_POLL_SECONDS, Observed, Verdict, worker_counts


def running(seen: Observed) -> Verdict:
    counts, desired = worker_counts(seen.desired, seen.job), seen.desired
    start = seen.start or seen.now_s
    # Workers that exited 0 have done their part: rank 1 often ends before rank 0 writes the report.
    done = counts["succeeded"]
    if counts["ready"] + done >= desired:
        message = (f"{done}/{desired} workers finished, {counts['ready']} running" if done
                   else f"all {desired} workers are ready")
        return seen.verdict(RUNNING, "WorkersReady", message, start=start)
    if seen.last_phase == RUNNING and counts["active"] + done >= desired:
        # A worker that drops out of readiness while its pod runs does not make the job Pending again.
        return seen.verdict(RUNNING, "WorkersReady",
                            f"{counts['ready']}/{desired} workers ready, {counts['active']} running", start=start)
    phase = RESTARTING if seen.last_phase == RESTARTING else PENDING
    message = (f"{counts['ready']}/{desired} workers ready, {counts['active']} created; "
               "waiting for the rest to be scheduled and start")
    if seen.issues:
        message += "; " + "; ".join(seen.issues[:4])
    # Scheduling failures and image pulls change no Job status: look again.
    return seen.verdict(phase, "WorkerFailed" if phase == RESTARTING else "WaitingForWorkers", message,
                        start=start, requeue=STUCK_POLL_SECONDS)
