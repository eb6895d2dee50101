"""What the policies read (Observed) and what they answer (Verdict), and the helpers that read a Job."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Optional

from tuneguard import api, contract


if TYPE_CHECKING:
    from .lost_node import TerminatingPod

PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED = api.PHASES
TERMINAL = (SUCCEEDED, FAILED)
# How often to look again at a job that waits on something no watch event announces.
POLL_SECONDS = 5.0
STUCK_POLL_SECONDS = 10.0


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def job_condition(job: dict, type_: str) -> dict | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def job_attempt(job: dict) -> int:
    try:
        return int(((job.get("metadata") or {}).get("labels") or {}).get(contract.LABEL_ATTEMPT, "0"))
    except ValueError:
        return 0


def worker_counts(desired: int, job: dict | None) -> dict:
    st = (job or {}).get("status") or {}
    return {
        "desired": desired,
        "active": int(st.get("active") or 0),
        "ready": int(st.get("ready") or 0),
        "succeeded": int(st.get("succeeded") or 0),
        "failed": int(st.get("failed") or 0),
    }


@dataclass(frozen=True)
class Verdict:
    """One policy's answer: the phase to write and what to do about it."""

    phase: str
    reason: str
    message: str
    restarts: int
    start: Optional[str]  # status.startTime, the deadline clock
    completion: Optional[str]  # status.completionTime, the TTL clock
    action: Optional[str] = None  # on the worker Job: create | delete | suspend | resume; on its Kueue Workload: deactivate | activate
    requeue: Optional[float] = None  # seconds until the next look
    delete_self: bool = False  # the TTL ran out: delete the FineTuneJob
    announce: bool = False  # post the Event even though the phase stays the same
    disruptions: int = 0  # status.disruptions: group restarts after a preemption, eviction or drain


@dataclass(frozen=True)
class Observed:
    """One reconcile's inputs: the status the operator wrote last time, the spec, the worker Job."""

    now: datetime
    # The defaults when the spec does not validate: then only terminal.invalid_spec runs.
    run_policy: api.RunPolicy = field(default_factory=api.RunPolicy)
    desired: int = 0  # spec.resources.workers
    queue: Optional[str] = None  # spec.resources.queueName (Kueue)
    job: Optional[dict] = None  # the worker Job, as the API server has it
    issues: Optional[list[str]] = None  # why existing workers are not ready (status.pod_issues)
    terminating: tuple["TerminatingPod", ...] = ()  # the worker pods being deleted, with their nodes' state
    workload: Optional[dict] = None  # Kueue's Workload of the worker Job (queueName set), when it exists
    # What the operator wrote to status last time.
    last_phase: Optional[str] = None
    last_reason: Optional[str] = None
    last_message: str = ""
    last_conditions: tuple[dict, ...] = ()
    restarts: int = 0
    disruptions: int = 0
    start: Optional[str] = None
    completion: Optional[str] = None

    @property
    def attempt(self) -> int:
        """The group's attempt: every restart, counted against backoffLimit or not (a disruption)."""
        return self.restarts + self.disruptions

    @property
    def now_s(self) -> str:
        return rfc3339(self.now)

    @property
    def deleting(self) -> bool:
        return bool(self.job and (self.job.get("metadata") or {}).get("deletionTimestamp"))

    @property
    def current(self) -> bool:
        """The Job belongs to this attempt; an older one is a leftover of a restart not yet finished."""
        return self.current_for(self.attempt)

    def current_for(self, attempt: int) -> bool:
        return self.job is not None and not self.deleting and job_attempt(self.job) >= attempt

    def verdict(self, phase: str, reason: str, message: str, **changes) -> Verdict:
        """A Verdict that keeps restarts, disruptions, startTime and completionTime unless `changes` says otherwise."""
        kept = Verdict(phase, reason, message, restarts=self.restarts, start=self.start, completion=self.completion,
                       disruptions=self.disruptions)
        return dataclasses.replace(kept, **changes)


def observe(body: dict, ftj: api.FineTuneJob | None, job: dict | None, now: datetime,
            issues: list[str] | None = None, terminating: tuple["TerminatingPod", ...] = (),
            workload: dict | None = None) -> Observed:
    old = body.get("status") or {}
    spec = ftj.spec if ftj is not None else None
    return Observed(
        now=now,
        run_policy=spec.run_policy if spec else api.RunPolicy(),
        desired=spec.resources.workers if spec else 0,
        queue=spec.resources.queue_name if spec else None,
        job=job,
        issues=issues,
        terminating=terminating,
        workload=workload,
        last_phase=old.get("phase"),
        last_reason=old.get("reason"),
        last_message=old.get("message") or "",
        last_conditions=tuple(old.get("conditions") or ()),
        restarts=int(old.get("restarts") or 0),
        disruptions=int(old.get("disruptions") or 0),
        start=old.get("startTime"),
        completion=old.get("completionTime"),
    )
