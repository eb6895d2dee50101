"""runPolicy.ttlSecondsAfterFinished: delete a finished FineTuneJob (and, by owner references, its
children) this long after status.completionTime."""

from __future__ import annotations

import dataclasses

from .observed import TERMINAL, Observed, Verdict, parse_time


def after_finished(seen: Observed, verdict: Verdict) -> Verdict:
    ttl = seen.run_policy.ttl_seconds_after_finished
    if verdict.phase not in TERMINAL or ttl is None or not verdict.completion:
        return verdict
    left = (parse_time(verdict.completion) - seen.now).total_seconds() + ttl
    if left <= 0:
        return dataclasses.replace(verdict, delete_self=True)
    return dataclasses.replace(verdict, requeue=left)
