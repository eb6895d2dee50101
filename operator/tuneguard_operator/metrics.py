"""The operator's Prometheus metrics (names from tuneguard.contract).

Fleet metrics (jobs by phase and method, reconcile duration and errors, group restarts) and per-job
gauges mirrored from each FineTuneJob's status: phase, restarts, progress and the latest tuned
evaluation figures of status.training.metrics, so dashboards keep a job's final figures after its
pods are gone. A job's series are removed when the job is deleted.
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tuneguard import api, contract
from tuneguard.api import wire_name


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Gauge(contract.OP_JOBS, "FineTuneJobs by phase and method", ["phase", "method"], registry=r)
        self.leader = Gauge(contract.OP_LEADER, "1 while this replica leads (reconciles); 0 on a standby", registry=r)
        self.leader.set(1)  # without leader election every operator reconciles
        self.reconcile_seconds = Histogram(
            contract.OP_RECONCILE_SECONDS, "Time to reconcile one FineTuneJob", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.reconcile_errors = Counter(contract.OP_RECONCILE_ERRORS, "Reconciles that raised an error",
                                        registry=r)
        self.group_restarts = Counter(contract.OP_GROUP_RESTARTS, "Whole-group restarts after a worker failed",
                                      ["job", "namespace"], registry=r)
        self.pods_force_deleted = Counter(contract.OP_PODS_FORCE_DELETED,
                                          "Worker pods force-deleted: Terminating on a NotReady or vanished node",
                                          ["namespace"], registry=r)
        labels = list(contract.JOB_LABELS)
        self.job_phase = Gauge(contract.OP_JOB_PHASE, "1 for the job's current phase", labels + ["phase"],
                               registry=r)
        self.job_restarts = Gauge(contract.OP_JOB_RESTARTS, "Group restarts of the job so far", labels, registry=r)
        self.job_progress = Gauge(contract.OP_JOB_PROGRESS, "Training progress, step / total steps", labels,
                                  registry=r)
        self.job_figures = {
            f: Gauge(contract.job_figure_metric(f), f"Latest tuned {f} from status.training.metrics", labels,
                     registry=r)
            for f in contract.FIGURES
        }
        self._lock = threading.Lock()
        self._known: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, name) -> {method, phase, figures}

    # ----------------------------------------------------------------------------------- per job
    def observe(self, body: dict) -> None:
        """Mirror one FineTuneJob (as seen in a watch event) into the per-job and fleet gauges."""
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        method = ((body.get("spec") or {}).get("method") or {}).get("type", "")
        status = body.get("status") or {}
        phase = status.get("phase") or "Pending"
        training = status.get("training") or {}
        figures = training.get("metrics") or {}
        key = (ns, name)
        lab = dict(job=name, namespace=ns, method=method)
        with self._lock:
            prev = self._known.get(key)
            if prev and (prev["phase"] != phase or prev["method"] != method):
                self._drop_phase(prev, name, ns)
            self.job_phase.labels(**lab, phase=phase).set(1)
            self.job_restarts.labels(**lab).set(int(status.get("restarts") or 0))
            total = training.get("totalSteps") or 0
            if total:
                self.job_progress.labels(**lab).set(min(1.0, float(training.get("step") or 0) / total))
            seen = set()
            for f, gauge in self.job_figures.items():
                value = figures.get(wire_name(f))
                if isinstance(value, (int, float)):
                    gauge.labels(**lab).set(float(value))
                    seen.add(f)
            if prev:
                for f in prev["figures"] - seen:
                    self._remove(self.job_figures[f], name, ns, prev["method"])
            self._known[key] = {"phase": phase, "method": method, "figures": seen}
            self._recount()

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone: remove every series that names it."""
        with self._lock:
            prev = self._known.pop((namespace, name), None)
            if prev is None:
                return
            self._drop_phase(prev, name, namespace)
            for g in (self.job_restarts, self.job_progress, *self.job_figures.values()):
                self._remove(g, name, namespace, prev["method"])
            self._remove(self.group_restarts, name, namespace, None)
            self._recount()

    def _drop_phase(self, prev: dict, name: str, ns: str) -> None:
        try:
            self.job_phase.remove(name, ns, prev["method"], prev["phase"])
        except KeyError:
            pass

    @staticmethod
    def _remove(metric: Any, name: str, ns: str, method: str | None) -> None:
        try:
            if method is None:
                metric.remove(name, ns)
            else:
                metric.remove(name, ns, method)
        except KeyError:
            pass

    def _recount(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for info in self._known.values():
            k = (info["phase"], info["method"])
            counts[k] = counts.get(k, 0) + 1
        methods = {m for _, m in counts} | set(api.METHODS)
        for phase in api.PHASES:
            for m in methods:
                self.jobs.labels(phase=phase, method=m).set(counts.get((phase, m), 0))

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
