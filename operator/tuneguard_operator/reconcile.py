"""One reconcile of one FineTuneJob: read what exists, converge the children, write the status.

Order matters for crash safety: children first (create-or-patch, 409 tolerated), then the status
(the durable record of a decision such as a group restart), then the action on the worker Job, then
Events. A crash between any two steps is repaired by the next reconcile, which sees the same level
and plans the rest (see status.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from tuneguard import api, contract
from tuneguard.kube import ApiError, path
from tuneguard.validation import InvalidManifest, parse_job

from . import render
from .cache import ObjectCache
from .metrics import Metrics
from .policies.lost_node import TerminatingPod
from .policies.observed import parse_time
from .status import Plan, decide, pod_issues, rfc3339

log = logging.getLogger("tuneguard.operator")

# The parts of each child the operator keeps converged after creation (the rest is immutable or
# belongs to other controllers).
MUTABLE = {
    "ConfigMap": ("data",),
    "Service": ("spec.selector", "spec.ports", "spec.publishNotReadyAddresses"),
    "NetworkPolicy": ("spec",),
    "ServiceAccount": (),
    "Role": ("rules",),
    "RoleBinding": ("subjects",),
}
ENSURE_TTL = 300.0  # re-check children that no event reports on (manual deletion) this often


class Retry(Exception):
    """Not an error: something to wait for (e.g. the garbage collector), try again shortly."""


class Refused(Exception):
    """The API server refused to create a child as invalid (422): the spec can never run, no retry can help.
    The admission schema cannot check everything the children's own validation does (fuzzing found
    priorityClassName), so this is the backstop: the job fails with the server's message instead of looping."""


def _dig(obj: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = (obj or {}).get(part)
    return obj


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _merge(a: dict, b: dict) -> dict:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v
    return a


def _message(e: ApiError) -> str:
    return (e.body.get("message") if isinstance(e.body, dict) else None) or str(e)


def manifest_doc(body: dict) -> dict:
    """The stored object as a manifest the validator accepts (status and server fields left out)."""
    meta = body.get("metadata") or {}
    return {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
            "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
            "spec": body.get("spec")}


class Reconciler:
    def __init__(self, kube: Any, metrics: Metrics, clock: Callable[[], datetime] | None = None,
                 component: str = "tuneguard-operator", cache: ObjectCache | None = None):
        self.kube = kube
        self.metrics = metrics
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.component = component
        self.instance = os.environ.get("POD_NAME") or socket.gethostname()
        self._ensured: dict[tuple, float] = {}  # (ns, name, uid, generation) -> when
        # resourceVersion of each job after the operator's own last status write: the watch event
        # that write causes needs no reconcile (see handlers.Controller.on_ftj_event).
        self.own_writes: dict[tuple[str, str], str] = {}
        # FineTuneJobs and worker Jobs as last seen (the watches feed it, handlers.Controller); None: always GET
        self.cache = cache
        self._warned: set[str] = set()  # what _warn_once has logged
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------- entry point
    def reconcile(self, namespace: str, name: str) -> Optional[float]:
        """Converge one job; returns seconds until it wants to be looked at again (None: on events)."""
        body = self._read(api.KIND, namespace, name)
        if body is None:
            self.forget(namespace, name)
            return None
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return None  # the garbage collector removes the children; nothing blocks deletion
        uid = meta["uid"]
        try:
            ftj: api.FineTuneJob | None = parse_job(manifest_doc(body), f"{namespace}/{name}")
            invalid = None
        except InvalidManifest as e:
            ftj, invalid = None, "; ".join(str(err) for err in e.errors)

        job = None
        if ftj is not None:
            # A job the operator never wrote status for has no children yet: create without a GET first.
            phase = (body.get("status") or {}).get("phase")
            fresh = not phase
            try:
                if phase not in ("Succeeded", "Failed"):  # a finished job's children stay as they are
                    self._ensure_children(ftj, uid, meta.get("generation"), fresh)
            except Refused as e:
                return self._fail_refused(ftj, None, e)
            except Retry as e:
                if fresh:  # say what it waits for instead of showing no phase at all
                    self.kube.patch(path(api.KIND, namespace, name, "status"), {"status": {
                        "phase": "Pending", "message": str(e), "observedGeneration": meta.get("generation")}})
                raise
            # A fresh job has no worker Job (were one left by a crash, creating it answers 409).
            job = None if fresh else self._read("Job", namespace, render.worker_job_name(name))
            if job is not None and not self._owned(job, uid):
                raise Retry(f"Job {render.worker_job_name(name)} exists but belongs to another owner; "
                            "waiting for it to be garbage-collected")
        issues = self._pod_issues(ftj, job) if ftj is not None else None
        terminating = self._terminating(ftj, job) if ftj is not None else ()
        workload = self._workload(ftj, job) if ftj is not None else None
        plan = decide(body, ftj, job, self.clock(), invalid=invalid, issues=issues, terminating=terminating,
                      workload=workload)
        try:
            self._apply(body, ftj, job, plan, workload)
        except Refused as e:
            return self._fail_refused(ftj, job, e)
        return plan.requeue_after

    def _read(self, kind: str, namespace: str, name: str) -> dict | None:
        """The object from the cache, else from the API server (then cached)."""
        obj = self.cache.get(kind, namespace, name) if self.cache is not None else None
        if obj is None:
            obj = self.kube.get(path(kind, namespace, name))
            if obj is not None:
                self._cache(kind, obj)
        return obj

    def _cache(self, kind: str, obj: dict | None) -> None:
        if self.cache is not None and obj:
            self.cache.put(kind, obj)

    def _fail_refused(self, ftj: api.FineTuneJob, job: dict | None, why: Refused) -> None:
        """Fail the job for good (InvalidSpec, the server's message); nothing to look at again."""
        body = self._read(api.KIND, ftj.metadata.namespace, ftj.metadata.name)
        if body is not None:
            self._apply(body, ftj, job, decide(body, ftj, job, self.clock(), invalid=str(why)))
        return None

    def _pod_issues(self, ftj: api.FineTuneJob, job: dict | None) -> list[str] | None:
        """Only for a running, unsuspended Job whose workers are not all ready: one pod list."""
        if job is None or (job.get("spec") or {}).get("suspend") or (job.get("metadata") or {}).get("deletionTimestamp"):
            return None
        st = job.get("status") or {}
        if int(st.get("ready") or 0) >= ftj.spec.resources.workers or any(
                c.get("status") == "True" for c in st.get("conditions") or []):
            return None
        pods = self._worker_pods(ftj)
        return None if pods is None else pod_issues(pods)

    def _worker_pods(self, ftj: api.FineTuneJob) -> list[dict] | None:
        """The job's worker pods, or None without `list pods` (diagnostics and lost nodes need it; the job runs
        without)."""
        try:
            return self.kube.list(path("Pod", ftj.metadata.namespace),
                                  f"{contract.LABEL_JOB}={ftj.metadata.name},{contract.LABEL_ROLE}=worker")
        except ApiError as e:
            self._forbidden(e, "list pods", "status messages will not say why workers are stuck, and workers on "
                                            "a lost node are not force-deleted")
            return None

    def _terminating(self, ftj: api.FineTuneJob, job: dict | None) -> tuple[TerminatingPod, ...]:
        """The worker pods being deleted and their nodes' Ready state; read only while the Job reports
        terminating pods or is itself being deleted (a group restart), so a healthy job costs no extra request."""
        if job is None or not (int((job.get("status") or {}).get("terminating") or 0)
                               or (job.get("metadata") or {}).get("deletionTimestamp")):
            return ()
        out, ready_of = [], {}
        for pod in self._worker_pods(ftj) or []:
            meta, node = pod["metadata"], (pod.get("spec") or {}).get("nodeName")
            if not meta.get("deletionTimestamp"):
                continue
            if node and node not in ready_of:
                ready_of[node] = self._node_ready(node)
            if node and ready_of[node] == "unknowable":
                continue  # without `get nodes`, never force-delete: the node may be fine
            out.append(TerminatingPod(name=meta["name"], uid=meta["uid"], node=node, node_ready=ready_of.get(node),
                                      deletion=parse_time(meta["deletionTimestamp"]),
                                      forced=meta.get("deletionGracePeriodSeconds") == 0))
        return tuple(out)

    def _workload(self, ftj: api.FineTuneJob, job: dict | None) -> dict | None:
        """Kueue's Workload of the worker Job (Kueue labels it with the Job's uid), for a job with a queueName whose
        Job is suspended (waiting, evicted) or is to be: an admitted, running job needs no look at it."""
        if job is None or not ftj.spec.resources.queue_name:
            return None
        if not ((job.get("spec") or {}).get("suspend") or ftj.spec.run_policy.suspend):
            return None
        try:
            found = self.kube.list(path("Workload", ftj.metadata.namespace),
                                   f"kueue.x-k8s.io/job-uid={job['metadata']['uid']}")
        except ApiError as e:
            if e.status == 404:  # no Workload kind: Kueue is not installed
                self._warn_once("kueue", "spec.resources.queueName is set but this cluster has no Kueue (no Workload "
                                         "kind): the job waits in Queued until Kueue is installed")
                return None
            self._forbidden(e, "list workloads.kueue.x-k8s.io", "queued jobs do not say why, and suspending one "
                                                                 "cannot deactivate its Workload")
            return None
        return found[0] if found else None

    def _forbidden(self, e: ApiError, what: str, without: str) -> None:
        """A 403 on a read that only adds diagnostics or repairs: say once what is lost without the grant (the job
        still runs); anything else is raised."""
        if e.status != 403:
            raise e
        self._warn_once(what, f"cannot {what} ({e}): {without}; grant `{what}` to the operator")

    def _warn_once(self, key: str, message: str) -> None:
        """A cluster-wide lack (a grant, an API) logged once per operator process, not once per reconcile."""
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _node_ready(self, name: str) -> str | None:
        """The node's Ready condition status; None when the node is gone; "unknowable" without `get nodes`."""
        try:
            node = self.kube.get(path("Node", None, name))
        except ApiError as e:
            self._forbidden(e, "get nodes", "workers stuck Terminating on a lost node are not force-deleted")
            return "unknowable"
        if node is None:
            return None
        cond = next((c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), {})
        return cond.get("status") or "Unknown"

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)
        if self.cache is not None:
            self.cache.drop(api.KIND, namespace, name)
        self.own_writes.pop((namespace, name), None)
        with self._lock:
            for key in [k for k in self._ensured if k[0] == namespace and k[1] == name]:
                del self._ensured[key]

    # ---------------------------------------------------------------------------------- children
    @staticmethod
    def _owned(obj: dict, uid: str) -> bool:
        return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])

    def _ensure_children(self, ftj: api.FineTuneJob, uid: str, generation: int | None, fresh: bool = False) -> None:
        ns, name = ftj.metadata.namespace, ftj.metadata.name
        key = (ns, name, uid, generation)
        with self._lock:
            when = self._ensured.get(key)
        if when is not None and time.monotonic() - when < ENSURE_TTL:
            return
        for want in render.children(ftj, uid):
            self._ensure(want, uid, fresh)
        with self._lock:
            for k in [k for k in self._ensured if k[:2] == (ns, name)]:
                del self._ensured[k]
            self._ensured[key] = time.monotonic()

    def _ensure(self, want: dict, uid: str, fresh: bool = False) -> dict:
        kind, meta = want["kind"], want["metadata"]
        p = path(kind, meta["namespace"], meta["name"])
        have = None if fresh else self.kube.get(p)
        if have is None:
            try:
                created = self.kube.create(path(kind, meta["namespace"]), want)
                log.info("created %s %s/%s", kind, meta["namespace"], meta["name"],
                         extra={"job": meta["labels"].get(contract.LABEL_JOB), "kind": kind})
                return created
            except ApiError as e:
                if e.status == 422:
                    raise Refused(f"the API server refused {kind} {meta['name']}: {_message(e)}") from None
                if e.status != 409:
                    raise
                have = self.kube.get(p)
                if have is None:
                    raise Retry(f"{kind} {meta['name']} conflicted on create and vanished") from None
        if not self._owned(have, uid):
            if (have["metadata"].get("deletionTimestamp")
                    or any(r.get("kind") == api.KIND for r in have["metadata"].get("ownerReferences") or [])):
                raise Retry(f"{kind} {meta['name']} belongs to an earlier FineTuneJob of that name; "
                            "waiting for the garbage collector")
            raise RuntimeError(f"{kind} {meta['namespace']}/{meta['name']} exists and is not owned by this "
                               "FineTuneJob; rename or delete it")
        patch: dict = {}
        for field in MUTABLE[kind]:
            if _dig(have, field) != _dig(want, field):
                _merge(patch, _nest(field, _dig(want, field)))
        labels = have["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in meta["labels"].items()):
            _merge(patch, {"metadata": {"labels": meta["labels"]}})
        if patch:
            if kind == "ConfigMap":
                # merge-patch of data replaces keys individually; drop keys we no longer render
                for k in (have.get("data") or {}):
                    if k not in want["data"]:
                        patch.setdefault("data", {})[k] = None
            have = self.kube.patch(p, patch)
            log.info("updated %s %s/%s", kind, meta["namespace"], meta["name"],
                     extra={"job": meta["labels"].get(contract.LABEL_JOB), "kind": kind})
        return have

    # ------------------------------------------------------------------------------------- apply
    def _apply(self, body: dict, ftj: api.FineTuneJob | None, job: dict | None, plan: Plan,
               workload: dict | None = None) -> None:
        meta = body["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        old = body.get("status") or {}
        patch = plan.patch(old)
        if patch:
            written = self.kube.patch(path(api.KIND, ns, name, "status"), {"status": patch})
            rv = ((written or {}).get("metadata") or {}).get("resourceVersion")
            if rv:
                self.own_writes[(ns, name)] = rv
                self._cache(api.KIND, written)
            body = {**body, "status": {**old, **{k: v for k, v in patch.items()}}}
        new_restarts = plan.status["restarts"]
        if new_restarts > int(old.get("restarts") or 0):
            self.metrics.group_restarts.labels(job=name, namespace=ns).inc(new_restarts - int(old.get("restarts") or 0))

        jp = path("Job", ns, render.worker_job_name(name))
        if plan.job_action == "create" and ftj is not None:
            attempt = new_restarts + plan.status["disruptions"]
            want = render.worker_job(ftj, uid, attempt, suspend=ftj.spec.run_policy.suspend)
            try:
                self._cache("Job", self.kube.create(path("Job", ns), want))
                log.info("created worker Job %s/%s (attempt %d)", ns, want["metadata"]["name"], attempt,
                         extra={"job": name})
            except ApiError as e:
                if e.status == 422:
                    raise Refused(f"the API server refused the worker Job {want['metadata']['name']}: "
                                  f"{_message(e)}") from None
                if e.status != 409:
                    raise
        elif plan.job_action == "delete" and job is not None:
            # Foreground: the Job object stays until its pods are gone, so the next group never
            # overlaps the old one (same hostnames, same GPUs).
            self.kube.delete(jp, propagation="Foreground", uid=job["metadata"]["uid"])
            log.info("deleting worker Job %s/%s", ns, render.worker_job_name(name), extra={"job": name})
        elif plan.job_action in ("deactivate", "activate") and workload is not None:
            wl = workload["metadata"]["name"]
            self.kube.patch(path("Workload", ns, wl), {"spec": {"active": plan.job_action == "activate"}})
            log.info("%s Kueue workload %s/%s", plan.job_action, ns, wl, extra={"job": name})
        elif plan.job_action in ("suspend", "resume") and job is not None:
            self.kube.patch(jp, {"spec": {"suspend": plan.job_action == "suspend"}})
            log.info("%s worker Job %s/%s", plan.job_action, ns, render.worker_job_name(name), extra={"job": name})

        for pod in plan.force_delete:
            self.kube.delete(path("Pod", ns, pod.name), uid=pod.uid, grace_period=0)
            log.warning("force-deleted pod %s/%s: Terminating on a lost node", ns, pod.describe(),
                        extra={"job": name, "node": pod.node})
            self.metrics.pods_force_deleted.labels(namespace=ns).inc()

        for ev in plan.events:
            self.post_event(body, ev.type, ev.reason, ev.message)
        if plan.status.get("phase") != old.get("phase") or plan.events:
            log.info("job %s/%s: %s (%s) %s", ns, name, plan.status["phase"], plan.events[0].reason if plan.events
                     else "", plan.status.get("message", ""), extra={"job": name, "namespace": ns,
                                                                    "phase": plan.status["phase"]})
        if plan.delete_self:
            self.kube.delete(path(api.KIND, ns, name), propagation="Background", uid=uid)
            log.info("deleted %s/%s: ttlSecondsAfterFinished passed", ns, name, extra={"job": name})
            self.forget(ns, name)
        else:
            self.metrics.observe(body)

    def post_event(self, body: dict, type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = rfc3339(self.clock())
        ev = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"],
                         "labels": {contract.LABEL_JOB: meta["name"]}},
            "involvedObject": {"apiVersion": api.API_VERSION, "kind": api.KIND, "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.kube.create(path("Event", meta["namespace"]), ev)
        except ApiError as e:  # an Event is best effort; never fail a reconcile over it
            log.warning("could not post Event %s for %s/%s: %s", reason, meta["namespace"], meta["name"], e)
