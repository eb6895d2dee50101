"""runPolicy.forceDeleteAfterSeconds: workers stuck Terminating on a lost node.

A pod's deletion waits for its kubelet to confirm that the containers stopped. When the node is NotReady
or gone, nobody confirms: the pod stays Terminating forever, and so does a group restart's foreground
deletion of the worker Job (kubeflow/training-operator#2072). With a podFailurePolicy the Job controller
does not count such a pod as failed either, so a running job whose worker was evicted from a dead node
would wait forever too. Past its grace period plus forceDeleteAfterSeconds, such a pod is force-deleted
(what `kubectl delete --force` does, and what Kubernetes' own non-graceful node shutdown does once an
administrator taints the node out-of-service), and a group that was running restarts as a disruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from .observed import RESTARTING, Observed, Verdict, job_condition


@dataclass(frozen=True)
class TerminatingPod:
    """A worker pod with a deletionTimestamp, and the state of its node as read in the same reconcile."""

    name: str
    uid: str
    node: Optional[str]  # spec.nodeName; None: never scheduled (nothing to wait for)
    node_ready: Optional[str]  # the node's Ready condition: "True", "False", "Unknown"; None: no such node
    deletion: datetime  # metadata.deletionTimestamp: when its grace period ends
    forced: bool = False  # already force-deleted (grace period 0); waiting only for its finalizers

    @property
    def node_lost(self) -> bool:
        return self.node is not None and self.node_ready != "True"

    def describe(self) -> str:
        state = "gone" if self.node_ready is None else f"Ready={self.node_ready}"
        return f"{self.name} on node {self.node} ({state})"


def overdue(pods: tuple[TerminatingPod, ...], after: int, now: datetime) -> list[TerminatingPod]:
    """The pods to force-delete now: on a lost node, and past their grace period by `after` seconds."""
    return [p for p in pods if p.node_lost and not p.forced and (now - p.deletion).total_seconds() >= after]


def next_due(pods: tuple[TerminatingPod, ...], after: int, now: datetime) -> Optional[float]:
    """Seconds until the next pod on a lost node falls due, or None if none will."""
    waits = [after - (now - p.deletion).total_seconds() for p in pods if p.node_lost and not p.forced]
    waits = [w for w in waits if w > 0]
    return min(waits) if waits else None


def restart_stuck(seen: Observed) -> Optional[Verdict]:
    """The current group has a worker stuck Terminating on a lost node: restart it as a disruption (the
    force-delete itself is reconcile's, for every overdue pod, whatever the phase)."""
    if not seen.current or job_condition(seen.job, "Failed") or job_condition(seen.job, "Complete"):
        return None
    stuck = overdue(seen.terminating, seen.run_policy.force_delete_after_seconds, seen.now)
    if not stuck:
        return None
    n = seen.disruptions + 1
    who = ", ".join(p.describe() for p in stuck)
    return seen.verdict(RESTARTING, "WorkerDisrupted",
                        f"worker lost with its node: {who} stayed Terminating past forceDeleteAfterSeconds "
                        f"({seen.run_policy.force_delete_after_seconds}s); force-deleted, restarting the whole "
                        f"group, not counted against backoffLimit (disruption {n})",
                        disruptions=n, action="delete", announce=seen.last_phase == RESTARTING)
