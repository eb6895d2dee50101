"""Prometheus alerting rules, generated from the metric names in tuneguard.contract (one source).

    python -m tuneguard.alerts --write

writes two files that tests keep in sync with this module:
- charts/tuneguard/files/tuneguard.rules.yaml: plain Prometheus rule groups with the default thresholds
  (what `promtool test rules` checks, and what a Prometheus without the Prometheus Operator loads);
- charts/tuneguard/templates/prometheusrule.yaml: the same rules as a PrometheusRule, thresholds from
  `.Values.alerts`, rendered only when the cluster serves monitoring.coreos.com/v1 (or when forced).

What Prometheus sees: trainer and operator series carry their own `job` (FineTuneJob name) and
`namespace` labels, kept by the monitors' honorLabels; the operator's scrape target itself appears as
`up{job="<release>-operator"}` (the metrics Service's name), which is what the operator-down alert watches.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneguard import contract as c

RULES_FILE = Path("charts/tuneguard/files/tuneguard.rules.yaml")
TEMPLATE_FILE = Path("charts/tuneguard/templates/prometheusrule.yaml")
BY = "namespace, job, method"
# Values of the `guardrail` label on tuneguard_guardrail_breaches_total (set by the trainer).
GUARDRAIL_HALLUCINATION = "hallucination"
GUARDRAIL_DRIFT = "drift"

# Defaults of .Values.alerts (values.yaml must hold the same; a test checks).
DEFAULTS = {
    "hallucinationIncrease": 0.05,  # tuned - reference hallucination rate (absolute)
    "driftKL": 0.5,  # nats/token
    "restartsPerHour": 2,
    "noProgressSeconds": 1800,
    "operatorJob": "tuneguard-operator",  # up{job=...} of the operator's scrape target
}
# How the chart fills each parameter in.
HELM = {
    "hallucinationIncrease": "{{ .Values.alerts.hallucinationIncrease }}",
    "driftKL": "{{ .Values.alerts.driftKL }}",
    "restartsPerHour": "{{ .Values.alerts.restartsPerHour }}",
    "noProgressSeconds": "{{ .Values.alerts.noProgressSeconds }}",
    "operatorJob": '{{ include "tuneguard.metricsServiceName" . }}',
}


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str
    selectors: tuple[str, ...]  # the series the expression reads: each must exist where Tuneguard runs


def _fig(figure: str, model: str) -> str:
    return f'max by ({BY}) ({c.figure_metric(figure)}{{model="{model}"}})'


def alerts(p: dict | None = None) -> list[Alert]:
    """The alerts with parameters `p` (default: DEFAULTS). Values are inserted as text."""
    p = {k: str(v) for k, v in {**DEFAULTS, **(p or {})}.items()}
    breaches = f"{c.GUARDRAIL_BREACHES}_total"
    running = f'max by (namespace, job) ({c.OP_JOB_PHASE}{{phase="Running"}}) == 1'
    return [
        Alert(
            "TuneguardHallucinationBudgetExceeded",
            f"(\n  {_fig('hallucination_rate', 'tuned')}\n  - on ({BY})\n  {_fig('hallucination_rate', 'reference')}\n"
            f") > {p['hallucinationIncrease']}\nor\n"
            f'sum by ({BY}) (increase({breaches}{{guardrail="{GUARDRAIL_HALLUCINATION}"}}[15m])) > 0',
            "0m", "warning",
            "FineTuneJob {{ $labels.namespace }}/{{ $labels.job }} is forgetting facts the model knew",
            "The tuned model of {{ $labels.namespace }}/{{ $labels.job }} ({{ $labels.method }}) hallucinates on "
            "held-out known facts more than its reference (the format-stage snapshot, or the base model) by over "
            "the budget, or its own guardrail fired.",
            "Open the Tuneguard dashboard for the job and compare known-fact accuracy tuned vs reference. "
            "`kubectl describe ftj JOB` shows status.training.guardrail and the best checkpoint within budget. "
            "Lower the learning rate or the number of steps, switch to method self-distill (KL toward the snapshot) "
            "or freeze (e.g. attention-only), or set triage.unknownPolicy: abstain/drop when many training facts "
            "are Unknown to the base model. guardrails.action: stop|rollback ends training automatically.",
            (f'{c.figure_metric("hallucination_rate")}{{model="tuned"}}',
             f'{c.figure_metric("hallucination_rate")}{{model="reference"}}'),
        ),
        Alert(
            "TuneguardDriftAboveBudget",
            f"{_fig('drift_kl', 'tuned')} > {p['driftKL']}\nor\n"
            f'sum by ({BY}) (increase({breaches}{{guardrail="{GUARDRAIL_DRIFT}"}}[15m])) > 0',
            "0m", "warning",
            "FineTuneJob {{ $labels.namespace }}/{{ $labels.job }} drifts too far from the base model",
            "Drift KL(base || tuned) of {{ $labels.namespace }}/{{ $labels.job }} is {{ $value }} nats/token, "
            "above the budget, or its drift guardrail fired.",
            "Large drift predicts forgetting. Check the dashboard's drift KL and parameter drift panels; lower "
            "the learning rate, use method self-distill (raise selfDistill.lambda) or freeze more parameters. "
            "`kubectl describe ftj JOB` shows the last guardrail outcome.",
            (f'{c.figure_metric("drift_kl")}{{model="tuned"}}',),
        ),
        Alert(
            "TuneguardJobFailed",
            f'max by ({BY}) ({c.OP_JOB_PHASE}{{phase="Failed"}}) == 1',
            "1m", "warning",
            "FineTuneJob {{ $labels.namespace }}/{{ $labels.job }} failed",
            "{{ $labels.namespace }}/{{ $labels.job }} ({{ $labels.method }}) is in phase Failed.",
            "`kubectl describe ftj JOB -n NS` shows the Failed condition's reason (BackoffLimitExceeded, "
            "DeadlineExceeded, InvalidSpec ...) and events; `kubectl logs -n NS -l tuneguard.io/job=JOB` the "
            "workers' last logs. Fix the cause, then delete and re-apply the FineTuneJob.",
            (f"{c.OP_JOB_PHASE}",),
        ),
        Alert(
            "TuneguardJobRestartingRepeatedly",
            f"max by ({BY}) (\n  max_over_time({c.OP_JOB_RESTARTS}[1h]) - min_over_time({c.OP_JOB_RESTARTS}[1h])\n"
            f") >= {p['restartsPerHour']}",
            "0m", "warning",
            "FineTuneJob {{ $labels.namespace }}/{{ $labels.job }} keeps restarting",
            "The worker group of {{ $labels.namespace }}/{{ $labels.job }} restarted {{ $value }} times in the "
            "last hour.",
            "Every worker failure restarts the whole group from the last checkpoint. Look for the failing pod: "
            "`kubectl get pods -n NS -l tuneguard.io/job=JOB`, `kubectl logs --previous`; common causes are "
            "OOM (raise resources.memory or shmSize, lower batchSize, use ZeRO 2/3), NCCL timeouts (network), "
            "and preempted or unhealthy GPU nodes. runPolicy.backoffLimit bounds the restarts.",
            (f"{c.OP_JOB_RESTARTS}",),
        ),
        Alert(
            "TuneguardOperatorDown",
            f'absent(up{{job="{p["operatorJob"]}"}} == 1)',
            "5m", "critical",
            "The Tuneguard operator is not being scraped",
            "Prometheus has had no healthy scrape of the Tuneguard operator for 5 minutes: FineTuneJobs are not "
            "reconciled (no new workers, no restarts, no status).",
            "`kubectl -n OPERATOR_NS get deploy,pods -l app.kubernetes.io/name=tuneguard` and "
            "`kubectl -n OPERATOR_NS logs deploy/RELEASE-operator`. CrashLoopBackOff with 403 errors means RBAC "
            "does not match the watch mode (helm upgrade with the right watch.* values). If the pod is healthy, "
            "check that the ServiceMonitor is selected by your Prometheus (monitoring.labels).",
            (f'up{{job="{p["operatorJob"]}"}}',),
        ),
        Alert(
            "TuneguardNoTrainingProgress",
            f"(time() - max by ({BY}) ({c.TRAIN_LAST_STEP_TIMESTAMP})) > {p['noProgressSeconds']}\n"
            f"and on (namespace, job)\n({running})",
            "5m", "warning",
            "FineTuneJob {{ $labels.namespace }}/{{ $labels.job }} has made no training step for a while",
            "{{ $labels.namespace }}/{{ $labels.job }} is Running but its last optimizer step was "
            "{{ $value | humanizeDuration }} ago.",
            "A hung collective (one rank died or the network stalls) or a stuck data loader. "
            "`kubectl logs -n NS -l tuneguard.io/job=JOB --tail=50` on every worker; py-spy dump on rank 0. "
            "Deleting one worker pod makes the operator restart the group from the last checkpoint.",
            (c.TRAIN_LAST_STEP_TIMESTAMP, f'{c.OP_JOB_PHASE}{{phase="Running"}}'),
        ),
        Alert(
            "TuneguardTrainerMetricsMissing",
            f"({running})\nunless on (namespace, job)\nmax by (namespace, job) ({c.TRAIN_STEP})",
            "{{ div .Values.alerts.noProgressSeconds 60 }}m" if p["noProgressSeconds"].startswith("{{")
            else f"{max(int(p['noProgressSeconds']), 0) // 60}m",
            "warning",
            "FineTuneJob {{ $labels.namespace }}/{{ $labels.job }} is Running but exports no training metrics",
            "{{ $labels.namespace }}/{{ $labels.job }} has been Running without any scraped trainer step metric.",
            "Either the trainer is stuck before its first step (model download, triage) or Prometheus does not "
            "scrape the workers: check the PodMonitor (selects tuneguard.io/role=worker, port 'metrics') and "
            "that your Prometheus selects it (monitoring.labels), then the rank-0 worker's logs.",
            (c.TRAIN_STEP, f'{c.OP_JOB_PHASE}{{phase="Running"}}'),
        ),
        Alert(
            "TuneguardReconcileErrors",
            f"sum(rate({c.OP_RECONCILE_ERRORS}_total[10m])) > 0",
            "15m", "warning",
            "The Tuneguard operator keeps failing to reconcile",
            "The operator has reported reconcile errors continuously for 15 minutes.",
            "`kubectl -n OPERATOR_NS logs deploy/RELEASE-operator | grep -i error`; 403s mean missing RBAC, "
            "409s are conflicts (harmless if rare), 422s invalid children (report a bug with the FineTuneJob).",
            (f"{c.OP_RECONCILE_ERRORS}_total",),
        ),
    ]


def _rule(a: Alert, p: dict) -> dict:
    return {
        "alert": a.name,
        "expr": a.expr,
        "for": a.for_,
        "labels": {"severity": a.severity},
        "annotations": {
            "summary": a.summary,
            "description": a.description,
            "runbook": a.runbook,
        },
    }


def rule_groups(p: dict | None = None) -> dict:
    p = {**DEFAULTS, **(p or {})}
    return {"groups": [{"name": "tuneguard", "rules": [_rule(a, p) for a in alerts(p)]}]}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, s):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def render_rules(p: dict | None = None) -> str:
    head = "# Generated by `python -m tuneguard.alerts --write` from tuneguard/alerts.py. Do not edit.\n"
    return head + yaml.dump(rule_groups(p), Dumper=_Dumper, sort_keys=False, width=120)


def _escape_prometheus_templates(text: str) -> str:
    """Keep Prometheus' own {{ ... }} annotation templates away from Helm."""
    return re.sub(r"\{\{ \$[^}]*\}\}", lambda m: "{{`" + m.group(0) + "`}}", text)


def render_template() -> str:
    groups = rule_groups(HELM)
    for g in groups["groups"]:
        for r in g["rules"]:
            for k in ("summary", "description"):
                r["annotations"][k] = _escape_prometheus_templates(r["annotations"][k])
    body = yaml.dump(groups, Dumper=_Dumper, sort_keys=False, width=120)
    body = "\n".join("  " + line if line else line for line in body.splitlines())
    return (
        "{{- /* Generated by `python -m tuneguard.alerts --write` from tuneguard/alerts.py. Do not edit. */}}\n"
        '{{- if and .Values.monitoring.prometheusRule.enabled (include "tuneguard.monitoringEnabled" .) }}\n'
        "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        '  name: {{ include "tuneguard.fullname" . }}\n'
        "  namespace: {{ .Release.Namespace }}\n"
        "  labels:\n"
        '    {{- include "tuneguard.labels" . | nindent 4 }}\n'
        "    {{- with .Values.monitoring.labels }}\n"
        "    {{- toYaml . | nindent 4 }}\n"
        "    {{- end }}\n"
        "spec:\n"
        f"{body}\n"
        "{{- end }}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {RULES_FILE} and {TEMPLATE_FILE}")
    args = ap.parse_args(argv)
    if not args.write:
        sys.stdout.write(render_rules())
        return 0
    root = Path(__file__).resolve().parents[1]
    for rel, text in ((RULES_FILE, render_rules()), (TEMPLATE_FILE, render_template())):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        print(f"wrote {root / rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
