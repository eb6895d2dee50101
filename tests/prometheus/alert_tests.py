"""promtool unit tests for the generated alerting rules: cases here, YAML generated.

    python -m tests.prometheus.alert_tests --write   # rewrites tests/prometheus/tuneguard_alerts_test.yaml
    promtool test rules tests/prometheus/tuneguard_alerts_test.yaml

The series look like what Prometheus stores after scraping through the chart's monitors (honorLabels:
the trainer's and operator's own job/namespace labels, plus pod/instance target labels). Each alert has
a case where it fires and a neighbour that must stay silent. Expected annotations are the rule's own
templates expanded here, so promtool's exact comparison checks the labels the text refers to.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from tuneguard import contract as c
from tuneguard.alerts import DEFAULTS, RULES_FILE, alerts

ROOT = Path(__file__).resolve().parents[2]
TEST_FILE = Path("tests/prometheus/tuneguard_alerts_test.yaml")


def _sel(metric: str, **labels) -> str:
    return metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _trainer(job, metric, **extra):
    return _sel(metric, job=job, namespace="ml", method="sft", pod=f"{job}-worker-0", instance="10.0.0.7:9400",
                **extra)


def _op(job, metric, **extra):
    return _sel(metric, job=job, namespace="ml", method="sft", instance="10.0.0.2:8080", **extra)


def _expand(text: str, labels: dict, value: str) -> str:
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), text)
    return re.sub(r"\{\{ \$value(?: \| \w+)? \}\}", value, text)


def _expect(name: str, labels: dict, value: str = "") -> dict:
    a = next(a for a in alerts() if a.name == name)
    return {
        "exp_labels": {"severity": a.severity, **labels},
        "exp_annotations": {"summary": _expand(a.summary, labels, value),
                            "description": _expand(a.description, labels, value),
                            "runbook": a.runbook},
    }


JOB = {"namespace": "ml", "method": "sft"}
OP_JOB = DEFAULTS["operatorJob"]


def build_tests() -> dict:
    hall = c.figure_metric("hallucination_rate")
    drift = c.figure_metric("drift_kl")
    breaches = f"{c.GUARDRAIL_BREACHES}_total"
    series = [
        # forgets: tuned 12% wrong on known facts, reference 0% -> over the 5-point budget
        (_trainer("forgetful", hall, model="tuned"), "0.12x100"),
        (_trainer("forgetful", hall, model="reference"), "0x100"),
        # within budget, no guardrail breach
        (_trainer("careful", hall, model="tuned"), "0.03x100"),
        (_trainer("careful", hall, model="reference"), "0x100"),
        # within the chart's budget, but the job's own (tighter) guardrail fired once at 60m
        (_trainer("strict", hall, model="tuned"), "0.02x100"),
        (_trainer("strict", hall, model="reference"), "0x100"),
        (_trainer("strict", breaches, guardrail="hallucination"), "0x59 1x40"),
        # drift
        (_trainer("forgetful", drift, model="tuned"), "0.8x100"),
        (_trainer("careful", drift, model="tuned"), "0.2x100"),
        # phases (operator gauges: 1 for the current phase)
        (_op("broken", c.OP_JOB_PHASE, phase="Failed"), "1x100"),
        (_op("careful", c.OP_JOB_PHASE, phase="Running"), "1x60"),
        (_op("forgetful", c.OP_JOB_PHASE, phase="Succeeded"), "1x60"),
        # restarts: flaky restarts 3 times (at 21m, 31m, 41m), steady restarted once long ago
        (_op("flaky", c.OP_JOB_RESTARTS), "0x20 1x10 2x10 3x40"),
        (_op("steady", c.OP_JOB_RESTARTS), "1x100"),
    ]
    progress = [
        # stuck: Running, last step at t=0 and never again; moving: a step every minute
        (_op("stuck", c.OP_JOB_PHASE, phase="Running"), "1x60"),
        (_trainer("stuck", c.TRAIN_LAST_STEP_TIMESTAMP), "0x60"),
        (_trainer("stuck", c.TRAIN_STEP), "10x60"),
        (_op("moving", c.OP_JOB_PHASE, phase="Running"), "1x60"),
        (_trainer("moving", c.TRAIN_LAST_STEP_TIMESTAMP), "0+60x60"),
        (_trainer("moving", c.TRAIN_STEP), "0+1x60"),
        # blind: Running, but no trainer series is scraped at all
        (_op("blind", c.OP_JOB_PHASE, phase="Running"), "1x60"),
        # a finished job's stale timestamp must not alert
        (_op("done", c.OP_JOB_PHASE, phase="Succeeded"), "1x60"),
        (_trainer("done", c.TRAIN_LAST_STEP_TIMESTAMP), "0x60"),
    ]
    operator = [
        (_sel("up", job=OP_JOB, instance="10.0.0.2:8080", namespace="tuneguard-system"), "1x10 0x20"),
        (_sel(f"{c.OP_RECONCILE_ERRORS}_total", job=OP_JOB, instance="10.0.0.2:8080"), "0+2x40"),
    ]

    def inputs(rows):
        return [{"series": s, "values": v} for s, v in rows]

    return {
        "rule_files": [str(Path("../..") / RULES_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "name": "hallucination, drift, failed, restarting",
                "interval": "1m",
                "input_series": inputs(series),
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "TuneguardHallucinationBudgetExceeded", "exp_alerts": [
                        _expect("TuneguardHallucinationBudgetExceeded", {"job": "forgetful", **JOB})]},
                    {"eval_time": "60m", "alertname": "TuneguardHallucinationBudgetExceeded", "exp_alerts": [
                        _expect("TuneguardHallucinationBudgetExceeded", {"job": "forgetful", **JOB}),
                        _expect("TuneguardHallucinationBudgetExceeded", {"job": "strict", **JOB})]},
                    {"eval_time": "10m", "alertname": "TuneguardDriftAboveBudget", "exp_alerts": [
                        _expect("TuneguardDriftAboveBudget", {"job": "forgetful", **JOB}, "0.8")]},
                    {"eval_time": "30m", "alertname": "TuneguardJobFailed", "exp_alerts": [
                        _expect("TuneguardJobFailed", {"job": "broken", **JOB})]},
                    {"eval_time": "20m", "alertname": "TuneguardJobRestartingRepeatedly", "exp_alerts": []},
                    {"eval_time": "60m", "alertname": "TuneguardJobRestartingRepeatedly", "exp_alerts": [
                        _expect("TuneguardJobRestartingRepeatedly", {"job": "flaky", **JOB}, "3")]},
                ],
            },
            {
                "name": "no training progress, trainer metrics missing",
                "interval": "1m",
                "input_series": inputs(progress),
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "TuneguardNoTrainingProgress", "exp_alerts": []},
                    {"eval_time": "40m", "alertname": "TuneguardNoTrainingProgress", "exp_alerts": [
                        _expect("TuneguardNoTrainingProgress", {"job": "stuck", **JOB}, "40m 0s")]},
                    {"eval_time": "20m", "alertname": "TuneguardTrainerMetricsMissing", "exp_alerts": []},
                    {"eval_time": "40m", "alertname": "TuneguardTrainerMetricsMissing", "exp_alerts": [
                        _expect("TuneguardTrainerMetricsMissing", {"job": "blind", "namespace": "ml"})]},
                ],
            },
            {
                "name": "operator down, reconcile errors",
                "interval": "1m",
                "input_series": inputs(operator),
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "TuneguardOperatorDown", "exp_alerts": []},
                    {"eval_time": "20m", "alertname": "TuneguardOperatorDown", "exp_alerts": [
                        _expect("TuneguardOperatorDown", {})]},
                    {"eval_time": "10m", "alertname": "TuneguardReconcileErrors", "exp_alerts": []},
                    {"eval_time": "30m", "alertname": "TuneguardReconcileErrors", "exp_alerts": [
                        _expect("TuneguardReconcileErrors", {})]},
                ],
            },
        ],
    }


def render_tests() -> str:
    head = "# Generated by `python -m tests.prometheus.alert_tests --write`. Run: promtool test rules THIS_FILE\n"
    return head + yaml.safe_dump(build_tests(), sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="generate the promtool unit tests of the alerting rules")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    if args.write:
        (ROOT / TEST_FILE).write_text(render_tests())
        print(f"wrote {ROOT / TEST_FILE}")
    else:
        sys.stdout.write(render_tests())
    return 0


if __name__ == "__main__":
    sys.exit(main())
