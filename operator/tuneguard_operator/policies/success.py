"""Success: the worker Job of the current attempt reports Complete."""

from __future__ import annotations

from typing import Optional

from .observed import SUCCEEDED, Observed, Verdict, job_condition


def completed(seen: Observed) -> Optional[Verdict]:
    if not (seen.current and job_condition(seen.job, "Complete")):
        return None
    # The Job's own completionTime starts the TTL clock, so a late reconcile does not extend it.
    finished = (seen.job.get("status") or {}).get("completionTime") or seen.now_s
    return seen.verdict(SUCCEEDED, "Succeeded", f"all {seen.desired} workers completed", completion=finished)
