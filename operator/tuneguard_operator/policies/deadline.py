"""runPolicy.activeDeadlineSeconds: the longest a job may run (suspended time does not count, since
a resume restarts the clock)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Optional

from tuneguard import api

from .observed import FAILED, TERMINAL, Observed, Verdict, parse_time


def _seconds_left(run_policy: api.RunPolicy, start: str | None, now: datetime) -> Optional[float]:
    """Seconds until the deadline, or None where no deadline clock runs."""
    if run_policy.suspend or not start or run_policy.active_deadline_seconds is None:
        return None
    return (parse_time(start) - now).total_seconds() + run_policy.active_deadline_seconds


def exceeded(seen: Observed) -> Optional[Verdict]:
    left = _seconds_left(seen.run_policy, seen.start, seen.now)
    if left is None or left > 0:
        return None
    limit = seen.run_policy.active_deadline_seconds
    return seen.verdict(FAILED, "DeadlineExceeded",
                        f"the job ran longer than activeDeadlineSeconds ({limit}s); workers stopped",
                        completion=seen.now_s,
                        action="delete" if seen.job is not None and not seen.deleting else None)


def requeue(seen: Observed, verdict: Verdict) -> Verdict:
    """Look again when the deadline falls due, if that is sooner than the verdict's own requeue."""
    left = _seconds_left(seen.run_policy, verdict.start, seen.now)
    if verdict.phase in TERMINAL or left is None:
        return verdict
    return dataclasses.replace(verdict, requeue=max(min(left, verdict.requeue or left), 0.5))
