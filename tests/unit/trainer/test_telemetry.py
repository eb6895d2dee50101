"""Prometheus metrics with the contract's names, and the status.training merge patch."""

from __future__ import annotations

import urllib.request

from tuneguard import contract
from tuneguard_trainer import telemetry as tm
from tuneguard_trainer.engine import free_port


def _tele(**kw):
    return tm.Telemetry(job="j1", namespace="ns1", method="self-distill", **kw)


def test_metrics_endpoint_uses_contract_names():
    port = free_port()
    t = _tele(metrics_port=port)
    t.plan(100)
    t.step(10, 0.5, 1.25, tokens=4000, tokens_per_second=800.0)
    t.figures({f: 0.1 for f in contract.FIGURES}, "base")
    t.figures({"hallucination_rate": 0.3, "drift_kl": 0.02}, "tuned")
    t.triage({"highly_known": 3, "unknown": 7})
    t.leakage({"exact": 2, "near": 1, "train_duplicates": 4, "dropped": 3})
    t.breach("hallucination")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, frozenset(s.labels.items())): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    L = {"job": "j1", "namespace": "ns1", "method": "self-distill"}

    def val(name, **extra):
        return samples[(name, frozenset({**L, **extra}.items()))]

    assert val(contract.TRAIN_LOSS) == 1.25
    assert val(contract.TRAIN_STEP) == 10
    assert val(contract.TRAIN_TOTAL_STEPS) == 100
    assert val(contract.TRAIN_TOKENS_PER_SECOND) == 800
    assert val(contract.TRAIN_TOKENS + "_total") == 4000
    assert val(contract.TRAIN_LAST_STEP_TIMESTAMP) > 0
    assert val(contract.figure_metric("hallucination_rate"), model="tuned") == 0.3
    assert val(contract.figure_metric("eval_loss"), model="base") == 0.1
    assert val(contract.TRIAGE_EXAMPLES, category="unknown") == 7
    assert val(contract.LEAKAGE_EXAMPLES, kind="near") == 1 and val(contract.LEAKAGE_EXAMPLES, kind="dropped") == 3
    assert t.status.leakage.wire() == {"exact": 2, "near": 1, "trainDuplicates": 4, "dropped": 3}
    assert val(contract.GUARDRAIL_BREACHES + "_total", guardrail="hallucination") == 1


class FakeKube:
    """tuneguard.kube.Kube's patch, recorded."""
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def patch(self, p, body):
        self.calls.append({"path": p, "body": body})
        if self.fail:
            raise RuntimeError("apiserver down")


def test_status_patch_body_and_rate_limit():
    t = _tele(status_patch=True)
    api = t._kube = FakeKube()
    t.stage("training")  # forced
    t.plan(40)
    t.step(18, 0.9, 0.5, tokens=100, tokens_per_second=50.0)  # within 10 s: skipped
    assert len(api.calls) == 1
    t.figures({"hallucination_rate": 0.2, "known_accuracy": 0.8, "drift_kl": 0.4793398678302765}, "tuned")  # forced
    t.best(18, "/out/best-model", {"hallucination_rate": 0.2, "drift_kl": 0.01})
    call = api.calls[-1]
    assert call["path"] == "/apis/tuneguard.io/v1alpha1/namespaces/ns1/finetunejobs/j1/status"
    tr = call["body"]["status"]["training"]
    assert tr["stage"] == "training" and tr["step"] == 18 and tr["totalSteps"] == 40
    assert tr["progress"] == "45%" and tr["tokensPerSecond"] == 50.0
    assert tr["metrics"]["hallucinationRate"] == 0.2
    assert tr["metrics"]["driftKL"] == 0.4793  # rounded for `kubectl get ftj`; the gauge keeps every digit
    assert tr["bestCheckpoint"] == {"step": 18, "path": "/out/best-model", "hallucinationRate": 0.2, "driftKL": 0.01}
    assert tr["updatedAt"].endswith("Z")
    t.best(20, "/out/best-model", {}, adapter_path="/out/best-adapter")  # a LoRA job names both
    assert api.calls[-1]["body"]["status"]["training"]["bestCheckpoint"]["adapterPath"] == "/out/best-adapter"


def test_status_patch_failures_are_not_fatal():
    t = _tele(status_patch=True)
    t._kube = FakeKube(fail=True)
    for _ in range(3):
        t.stage("training")
    assert t._patch_failures == 3


def test_other_ranks_export_nothing():
    t = tm.Telemetry(job="j", namespace="n", method="sft", enabled=False, metrics_port=None, status_patch=True)
    t.step(1, 0.1, 1.0, 1, 1.0)
    t.stage("done")
    assert t.registry is None and not t.status_patch


def test_position_sets_step_and_progress_without_a_training_step():
    """A job resumed at its last step reports that step at once (loop.run calls position on resume)."""
    t = _tele()
    t.plan(48)
    t.position(48, 6.0)
    assert (t.status.step, t.status.epoch, t.status.progress) == (48, 6.0, "100%")
    assert t.status.loss is None  # no step has run: no loss is invented
    t.step(10, 0.5, 1.25, tokens=1, tokens_per_second=2.0)
    assert (t.status.step, t.status.loss, t.status.progress) == (10, 1.25, "20%")
