"""Jobs that have stopped for good: an invalid spec fails at once, and Succeeded and Failed are sticky."""

from __future__ import annotations

from typing import Optional

from .observed import FAILED, TERMINAL, Observed, Verdict, worker_counts


def invalid_spec(seen: Observed, why: str | None) -> Verdict:
    """A stored spec that does not validate (edited past the admission check) can never run."""
    return seen.verdict(FAILED, "InvalidSpec", f"the spec does not validate: {why}",
                        completion=seen.completion or seen.now_s)


def sticky(seen: Observed) -> Optional[Verdict]:
    """A finished job keeps its phase, reason and message; its Job is kept for the logs unless a
    Failed job still runs pods, which are then stopped."""
    if seen.last_phase not in TERMINAL:
        return None
    cond = next((c for c in seen.last_conditions if c.get("type") == seen.last_phase), {})
    still_running = (seen.last_phase == FAILED and seen.current
                     and worker_counts(seen.desired, seen.job)["active"] > 0)
    return seen.verdict(seen.last_phase, cond.get("reason", seen.last_phase),
                        cond.get("message", seen.last_message), action="delete" if still_running else None)
