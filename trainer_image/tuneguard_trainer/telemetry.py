"""Live telemetry of rank 0: Prometheus metrics and the FineTuneJob's status.training.

Metrics (names from tuneguard.contract, labels job, namespace, method):
  tuneguard_train_loss, tuneguard_train_step, tuneguard_train_total_steps,
  tuneguard_train_tokens_per_second, tuneguard_train_tokens_total (counter),
  tuneguard_train_last_step_timestamp_seconds,
  tuneguard_<figure>{model="base"|"tuned"} for every contract.FIGURES entry,
  tuneguard_triage_examples{category}, tuneguard_leakage_examples{kind},
  tuneguard_guardrail_breaches_total{guardrail}.
Served by prometheus-client on TUNEGUARD_METRICS_PORT (rank 0 only; no server when unset or 0).

Status: with TUNEGUARD_STATUS_PATCH=1, rank 0 merge-patches the FineTuneJob's status subresource with
``{"status": {"training": api.TrainingStatus.wire()}}`` (in-cluster config, else KUBECONFIG). Patches
are rate-limited to one every 10 s except forced ones (stage changes, evaluations, the end); a failed
patch is logged and training goes on.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Optional

from tuneguard import api, contract

log = logging.getLogger("tuneguard.trainer")

PATCH_MIN_INTERVAL_S = 10.0
USER_AGENT = "tuneguard-trainer"  # in the API server's audit log

TRIAGE_CATEGORIES = ("highly_known", "maybe_known", "weakly_known", "unknown", "dropped", "relabelled")
LEAKAGE_KINDS = ("exact", "near", "train_duplicates", "dropped")  # api.LeakageCounts


def _for_status(value) -> Optional[float]:
    """A figure as `kubectl get ftj` shows it: 4 significant digits (the metrics keep full precision)."""
    return None if value is None else float(f"{float(value):.4g}")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Telemetry:
    def __init__(self, *, job: str, namespace: str, method: str, enabled: bool = True,
                 metrics_port: Optional[int] = None, status_patch: bool = False):
        self.enabled = enabled
        self.labels = {"job": job, "namespace": namespace, "method": method}
        self.job, self.namespace = job, namespace
        self.status = api.TrainingStatus()
        self.status_patch = status_patch and enabled
        self._last_patch = 0.0
        self._patch_failures = 0
        self._kube = None
        self._lock = threading.Lock()
        self.registry = None
        self.port: Optional[int] = None
        if not enabled:
            return
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = self.registry = CollectorRegistry()
        L = list(contract.JOB_LABELS)
        self.g_loss = Gauge(contract.TRAIN_LOSS, "Training loss (mean over the last optimizer step).", L, registry=r)
        self.g_step = Gauge(contract.TRAIN_STEP, "Optimizer steps done.", L, registry=r)
        self.g_total = Gauge(contract.TRAIN_TOTAL_STEPS, "Optimizer steps planned.", L, registry=r)
        self.g_tps = Gauge(contract.TRAIN_TOKENS_PER_SECOND, "Training tokens per second (all ranks).", L, registry=r)
        self.c_tokens = Counter(contract.TRAIN_TOKENS, "Training tokens processed (all ranks).", L, registry=r)
        self.g_last = Gauge(contract.TRAIN_LAST_STEP_TIMESTAMP, "Unix time of the last optimizer step.", L, registry=r)
        self.g_fig = {
            f: Gauge(contract.figure_metric(f), f"Evaluation figure {f}.", L + ["model"], registry=r)
            for f in contract.FIGURES
        }
        self.g_stage = Gauge(contract.TRAIN_STAGE, "1 for the trainer's current stage, 0 for the others.",
                             L + ["stage"], registry=r)
        self.g_triage = Gauge(contract.TRIAGE_EXAMPLES, "Training examples per SliCK category.", L + ["category"], registry=r)
        self.g_set = Gauge(contract.EVAL_SET_ACCURACY, "Accuracy on each of spec.evaluation.sets.",
                           L + ["set", "model"], registry=r)
        self.g_shift = Gauge(contract.SHIFT_ACCURACY, "Accuracy asked in a shifted form (spec.evaluation.shifts).",
                             L + ["shift", "probe", "model"], registry=r)
        self.g_gap = Gauge(contract.ROBUSTNESS_GAP, "Accuracy asked unshifted minus asked shifted, same facts.",
                           L + ["shift", "probe", "model"], registry=r)
        self.g_leak = Gauge(contract.LEAKAGE_EXAMPLES, "Leakage check: leaked probe examples (exact, near), "
                            "training duplicates, dropped probe examples.", L + ["kind"], registry=r)
        self.c_breach = Counter(contract.GUARDRAIL_BREACHES, "Guardrail breaches.", L + ["guardrail"], registry=r)
        self.g_total.labels(**self.labels).set(0)
        self.g_step.labels(**self.labels).set(0)
        if metrics_port:
            from prometheus_client import start_http_server

            start_http_server(int(metrics_port), registry=r)
            self.port = int(metrics_port)
            log.info("metrics on :%d/metrics", self.port)

    # --------------------------------------------------------------------------------- constructors
    @classmethod
    def from_env(cls, job: api.FineTuneJob, *, is_main: bool, serve_metrics: Optional[bool] = None) -> "Telemetry":
        ns = os.environ.get(contract.ENV_JOB_NAMESPACE) or job.metadata.namespace or "default"
        name = os.environ.get(contract.ENV_JOB_NAME) or job.metadata.name
        port_env = os.environ.get(contract.ENV_METRICS_PORT, "")
        port = int(port_env) if port_env.strip().isdigit() else None
        if serve_metrics is False:
            port = None
        return cls(job=name, namespace=ns, method=job.spec.method.type, enabled=is_main,
                   metrics_port=port if is_main else None,
                   status_patch=os.environ.get(contract.ENV_STATUS_PATCH) == "1")

    # -------------------------------------------------------------------------------------- updates
    def stage(self, stage: str) -> None:
        if not self.enabled:
            return
        self.status.stage = stage
        for name in api.TRAINER_STAGES:
            self.g_stage.labels(**self.labels, stage=name).set(1 if name == stage else 0)
        self.flush(force=True)

    def plan(self, total_steps: int) -> None:
        if not self.enabled:
            return
        self.status.total_steps = int(total_steps)
        self.g_total.labels(**self.labels).set(total_steps)

    def position(self, step: int, epoch: float) -> None:
        """Where training stands (step, epoch, progress): after every step, and at once on a resume, so a
        job resumed at its last step does not report step 0."""
        if not self.enabled:
            return
        self.g_step.labels(**self.labels).set(step)
        s = self.status
        s.step, s.epoch = int(step), round(float(epoch), 4)
        s.progress = f"{int(100 * step / max(s.total_steps, 1))}%"

    def step(self, step: int, epoch: float, loss: float, tokens: int, tokens_per_second: float) -> None:
        if not self.enabled:
            return
        self.position(step, epoch)
        self.g_loss.labels(**self.labels).set(loss)
        self.g_tps.labels(**self.labels).set(tokens_per_second)
        self.c_tokens.labels(**self.labels).inc(max(tokens, 0))
        self.g_last.labels(**self.labels).set(time.time())
        s = self.status
        s.loss = round(float(loss), 6)
        s.tokens_per_second = round(float(tokens_per_second), 2)
        self.flush()

    def _counts(self, gauge, label: str, keys, counts: dict) -> dict:
        """Sets one labelled series per key (missing keys are 0); returns the counts as ints."""
        out = {k: int(counts.get(k, 0)) for k in keys}
        for k, v in out.items():
            gauge.labels(**self.labels, **{label: k}).set(v)
        return out

    def triage(self, counts: dict) -> None:
        if not self.enabled:
            return
        self.status.triage = api.TriageCounts(**self._counts(self.g_triage, "category", TRIAGE_CATEGORIES, counts))
        self.flush(force=True)

    def leakage(self, counts: dict) -> None:
        if not self.enabled:
            return
        self.status.leakage = api.LeakageCounts(**self._counts(self.g_leak, "kind", LEAKAGE_KINDS, counts))
        self.flush(force=True)

    def plan_summary(self, summary: api.PlanSummary) -> None:
        if self.enabled:
            self.status.plan = summary
            self.flush(force=True)

    def figures(self, figures: dict, model: str) -> None:
        if not self.enabled:
            return
        for f in contract.FIGURES:
            v = figures.get(f)
            if v is not None:
                self.g_fig[f].labels(**self.labels, model=model).set(float(v))
        ef = api.EvalFigures(**{f: _for_status(figures.get(f)) for f in contract.FIGURES})
        if model == "base":
            self.status.base = ef
        elif model == "reference":
            self.status.reference = ef  # equal to base when the job has no format stage
        else:
            self.status.metrics = ef
        self.flush(force=True)

    def sets(self, figures: dict, model: str) -> None:
        """spec.evaluation.sets' figures ({name: {accuracy, ...}}) of the base, reference or tuned model."""
        if not self.enabled or not figures:
            return
        for name, f in figures.items():
            if f.get("accuracy") is not None:
                self.g_set.labels(**self.labels, set=name, model=model).set(float(f["accuracy"]))
        if model == "tuned":
            self.status.sets = {name: _for_status(f["accuracy"]) for name, f in figures.items()
                                if f.get("accuracy") is not None}
            self.flush(force=True)

    def shifts(self, figures: dict, model: str) -> None:
        """Shift-test figures ({shift: {probe: {accuracy, gap, ...}}}) of the base, reference or tuned model."""
        if not self.enabled or not figures:
            return
        for shift, probes in figures.items():
            for probe, f in probes.items():
                if f.get("accuracy") is not None:
                    self.g_shift.labels(**self.labels, shift=shift, probe=probe, model=model).set(float(f["accuracy"]))
                if f.get("gap") is not None:
                    self.g_gap.labels(**self.labels, shift=shift, probe=probe, model=model).set(float(f["gap"]))
        if model == "tuned":
            self.status.robustness_gap = {shift: _for_status(p["known"]["gap"]) for shift, p in figures.items()
                                          if (p.get("known") or {}).get("gap") is not None}
            self.flush(force=True)

    def breach(self, guardrail: str) -> None:
        if self.enabled:
            self.c_breach.labels(**self.labels, guardrail=guardrail).inc()

    def guardrail(self, text: str) -> None:
        if self.enabled:
            self.status.guardrail = text
            self.flush(force=True)

    def best(self, step: int, path: str, figures: dict, adapter_path: Optional[str] = None) -> None:
        if self.enabled:
            self.status.best_checkpoint = api.CheckpointRef(
                step=step, path=path, adapter_path=adapter_path,
                hallucination_rate=_for_status(figures.get("hallucination_rate")),
                drift_kl=_for_status(figures.get("drift_kl")))
            self.flush(force=True)

    # ------------------------------------------------------------------------------------- patching
    def flush(self, force: bool = False) -> None:
        if not self.status_patch:
            return
        now = time.monotonic()
        if not force and now - self._last_patch < PATCH_MIN_INTERVAL_S:
            return
        self._last_patch = now
        self.status.updated_at = _now()
        body = {"status": {"training": self.status.wire()}}
        try:
            self._patch(body)
        except Exception as e:  # never fatal
            self._patch_failures += 1
            if self._patch_failures <= 3 or self._patch_failures % 20 == 0:
                log.warning("status patch of %s/%s failed (%d so far): %s", self.namespace, self.job,
                            self._patch_failures, e)

    def _patch(self, body: dict) -> None:
        """A merge patch of the job's status subresource, with the pod's token (the job's own Role)."""
        from tuneguard.kube import Kube, load_client, path

        with self._lock:
            if self._kube is None:
                self._kube = Kube(load_client(connections=1, user_agent=USER_AGENT), timeout=5)
            self._kube.patch(path(api.KIND, self.namespace, self.job, "status"), body)
