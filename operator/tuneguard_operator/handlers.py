"""kopf wiring: watches feed the work queue; worker threads reconcile.

kopf is used for what it does well (watch streams with re-listing and backoff, namespaces, the
liveness endpoint, graceful shutdown) and only through event handlers, which keep no progress in
the object and need no finalizer: a FineTuneJob can be deleted while the operator is down, and the
garbage collector removes its children. The reconcile itself is a plain function of what exists
(reconcile.py), called from a coalescing work queue so that a burst of events for one job is one
reconcile and no job is reconciled twice at once.

Watched: FineTuneJobs (spec, status.training from the trainer) and the worker Jobs, filtered
server-side by the managed-by label and mapped to their FineTuneJob by the tuneguard.io/job label.
The Job controller reports pod progress (active, ready, succeeded, failed, conditions) in the Job's
status, so the operator never needs to watch every pod.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import kopf

from tuneguard import api, contract

from .metrics import Metrics
from .reconcile import Reconciler, Retry
from .workqueue import WorkQueue

log = logging.getLogger("tuneguard.operator")

RESYNC_SECONDS = 300.0  # re-look at every known job even without events (a safety net; clocks use delayed re-adds)


class Controller:
    def __init__(self, reconciler: Reconciler, metrics: Metrics, workers: int = 4):
        self.reconciler = reconciler
        self.metrics = metrics
        self.queue = WorkQueue()
        self.workers = workers
        self.known: set[tuple[str, str]] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    # --------------------------------------------------------------------------------- events
    def on_ftj_event(self, event: dict) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if event.get("type") == "DELETED":
            self.known.discard(key)
            self.reconciler.forget(*key)
            self.queue.forget(key)
            return
        self.known.add(key)
        if self.reconciler.cache is not None:
            self.reconciler.cache.put(api.KIND, obj)
        self.metrics.observe(obj)
        if meta.get("resourceVersion") and self.reconciler.own_writes.get(key) == meta.get("resourceVersion"):
            return  # the echo of the operator's own status write: nothing new to converge
        self.queue.add(key)

    def on_job_event(self, event: dict) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        owner = (meta.get("labels") or {}).get(contract.LABEL_JOB)
        cache = self.reconciler.cache
        if cache is not None and event.get("type") == "DELETED":
            cache.drop("Job", meta.get("namespace"), meta.get("name"))
        elif cache is not None:
            cache.put("Job", obj)
        if owner:
            self.queue.add((meta.get("namespace"), owner))

    # -------------------------------------------------------------------------------- workers
    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._resync, name="resync", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.queue.shutdown()

    def _resync(self) -> None:
        while not self._stop.wait(RESYNC_SECONDS):
            for key in list(self.known):
                self.queue.add(key)

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            if key is None:
                return
            ns, name = key
            t0 = time.perf_counter()
            try:
                again = self.reconciler.reconcile(ns, name)
            except Retry as e:
                log.info("job %s/%s: %s", ns, name, e, extra={"job": name, "namespace": ns})
                self.queue.add_after(key, 2.0)
            except Exception as e:  # noqa: BLE001 - one job's error must not stop the others
                self.metrics.reconcile_errors.inc()
                delay = self.queue.retry(key)
                log.warning("reconcile of %s/%s failed (retry in %.1fs): %s", ns, name, delay, e,
                            exc_info=not _is_api_error(e), extra={"job": name, "namespace": ns})
            else:
                self.queue.forget(key)
                if again is not None:
                    self.queue.add_after(key, again)
            finally:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - t0)
                self.queue.done(key)


def _is_api_error(e: Exception) -> bool:
    from tuneguard.kube import ApiError

    return isinstance(e, ApiError)


def register(registry: kopf.OperatorRegistry, controller: Controller, *, cluster_wide: bool = True) -> None:
    """Register the watch handlers and the settings on a kopf registry."""

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True  # one replica; no KopfPeering CRD needed
        settings.posting.enabled = False  # the reconciler posts its own Events with reasons
        # Nothing is stored in the objects (event handlers keep no state), but should a handler
        # ever do, keep it in annotations: the structural status schema would prune status.kopf.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tuneguard.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="tuneguard.io")
        settings.persistence.finalizer = "tuneguard.io/unused-finalizer"
        settings.watching.label_selectors["batch", "jobs"] = f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        # With a fixed list of namespaces there is nothing to discover, and scanning would try to
        # list namespaces cluster-wide, which a namespaced install's RBAC rightly refuses.
        settings.scanning.disabled = not cluster_wide
        controller.start()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> Any:
        # A custom registry has none of kopf's default login handlers: in-cluster first, then KUBECONFIG.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        controller.stop()

    @kopf.on.event(api.GROUP, api.VERSION, api.PLURAL, registry=registry)
    async def ftj_event(event: dict, **_: Any) -> None:
        controller.on_ftj_event(event)

    @kopf.on.event("batch", "v1", "jobs", labels={contract.LABEL_MANAGED_BY: contract.MANAGED_BY},
                   registry=registry)
    async def job_event(event: dict, **_: Any) -> None:
        controller.on_job_event(event)

    @kopf.on.probe(id="queue", registry=registry)
    async def queue_depth(**_: Any) -> int:
        return len(controller.queue)
