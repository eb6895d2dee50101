"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection (and so
controller-runtime) does it, so that a Deployment can run two operators and only one reconciles.

- A candidate reads the Lease. It takes it when there is none, when the holder released it (empty
  holderIdentity), or when the holder has not renewed it for leaseDurationSeconds. Expiry is judged by this
  process's own clock from the moment it last saw the record change, never by comparing renewTime with its
  clock, so clock skew between nodes cannot make two leaders.
- Every write is a replace with the resourceVersion just read: of two candidates writing at once, the API
  server accepts one and answers 409 Conflict to the other.
- The leader renews every retry period. When no renewal has succeeded for the renew deadline (shorter than
  the lease duration), it stops leading before its lease can run out and another candidate takes over; the
  operator exits then (as controller-runtime does) and its pod restarts as a candidate.
- A leader that stops cleanly releases the Lease, so a standby takes over at once instead of a lease
  duration later.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from tuneguard.kube import ApiError, Kube, path

log = logging.getLogger("tuneguard.operator.leader")


def default_identity() -> str:
    """Unique per process: the pod name (or host) and the PID."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


@dataclass(frozen=True)
class ElectionSettings:
    namespace: str
    name: str = "tuneguard-operator"
    identity: str = field(default_factory=default_identity)
    lease_duration: float = 15.0  # a standby waits this long after the last renewal it saw
    renew_deadline: float = 10.0  # the leader gives up when it could not renew for this long
    retry_period: float = 2.0  # between attempts, to acquire or to renew

    def __post_init__(self):
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration, got "
                             f"{self.retry_period} / {self.renew_deadline} / {self.lease_duration}")


def _micro_time(t: float) -> str:
    """A Kubernetes MicroTime."""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, settings: ElectionSettings, clock: Callable[[], float] = time.monotonic):
        self.kube, self.s, self.clock = kube, settings, clock
        self.path = path("Lease", settings.namespace, settings.name)
        self._seen: Optional[tuple[str, float]] = None  # (the record as last read, when it changed, local clock)
        self.holder: Optional[str] = None  # the holder as last read
        self.last_renewed: Optional[float] = None

    # ------------------------------------------------------------------------------------ one attempt
    def try_acquire_or_renew(self) -> bool:
        """One read and at most one write; True when this process holds the Lease afterwards."""
        now, wall = self.clock(), time.time()
        lease = self.kube.get(self.path)
        me = self.s.identity
        record = {"holderIdentity": me, "leaseDurationSeconds": int(round(self.s.lease_duration)),
                  "renewTime": _micro_time(wall)}
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.s.name, "namespace": self.s.namespace},
                    "spec": {**record, "acquireTime": _micro_time(wall), "leaseTransitions": 0}}
            return self._write(lambda: self.kube.create(path("Lease", self.s.namespace), body), now)
        spec = lease.get("spec") or {}
        self.holder = spec.get("holderIdentity") or None
        key = repr(sorted(spec.items()))
        if self._seen is None or self._seen[0] != key:
            self._seen = (key, now)
        expired = now >= self._seen[1] + float(spec.get("leaseDurationSeconds") or self.s.lease_duration)
        if self.holder not in (None, me) and not expired:
            return False
        if self.holder != me:  # taking it over
            record["acquireTime"] = _micro_time(wall)
            record["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        lease["spec"] = {**spec, **record}  # metadata.resourceVersion stays: a concurrent write gets 409
        return self._write(lambda: self.kube.replace(self.path, lease), now)

    def _write(self, call, now: float) -> bool:
        try:
            call()
        except ApiError as e:
            if e.status in (409, 422):  # another candidate wrote first
                return False
            raise
        self.holder, self.last_renewed, self._seen = self.s.identity, now, None
        return True

    # -------------------------------------------------------------------------------------- loops
    def _attempt(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as e:  # the API server unreachable: not leading this round
            log.warning("leader election: %s", e)
            return False

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this process leads (True) or stop is set (False)."""
        announced = None
        while not stop.is_set():
            if self._attempt():
                log.info("leader election: became the leader", extra={"lease": self.s.name, "identity": self.s.identity})
                return True
            if self.holder != announced:
                announced = self.holder
                log.info("leader election: standing by", extra={"leader": self.holder, "lease": self.s.name})
            stop.wait(self.s.retry_period * (1 + 0.2 * random.random()))  # jitter: candidates spread out
        return False

    def keep_leading(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a thread; call on_lost once no renewal has succeeded for the renew deadline."""
        def loop():
            while not stop.wait(self.s.retry_period):
                if self._attempt():
                    continue
                if self.holder not in (None, self.s.identity) or \
                        self.clock() - (self.last_renewed or 0.0) >= self.s.renew_deadline:
                    log.error("leader election: lost the lease", extra={"leader": self.holder, "lease": self.s.name})
                    on_lost()
                    return

        t = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        t.start()
        return t

    def release(self) -> None:
        """Give the Lease up (if still held), so that a standby need not wait for it to expire."""
        try:
            lease = self.kube.get(self.path)
            spec = (lease or {}).get("spec") or {}
            if spec.get("holderIdentity") != self.s.identity:
                return
            lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1,
                             "renewTime": _micro_time(time.time())}
            self.kube.replace(self.path, lease)
            log.info("leader election: released the lease", extra={"lease": self.s.name})
        except Exception as e:
            log.warning("leader election: could not release the lease: %s", e)
