"""The Grafana dashboard, generated from the metric names in tuneguard.contract (one source).

    python -m tuneguard.dashboard            # print the JSON
    python -m tuneguard.dashboard --write    # rewrite charts/tuneguard/files/dashboards/tuneguard.json

A test fails when the committed JSON differs from what this module generates, so renaming a metric in
the contract cannot leave a panel querying a series that no longer exists.

What Prometheus sees: the trainer's and the operator's series carry their own `job` (the FineTuneJob's
name) and `namespace` labels; the chart's PodMonitor and ServiceMonitor scrape with honorLabels, so
those win over the target's. Template variables: datasource, namespace, job (multi-value, All = .*).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tuneguard import contract as c

DASHBOARD_UID = "tuneguard-jobs"
DASHBOARD_FILE = Path("charts/tuneguard/files/dashboards/tuneguard.json")
SEL = 'namespace=~"$namespace", job=~"$job"'  # every per-job selector
BY_JOB = "namespace, job"

# Human titles of the evaluation figures, and the Grafana unit each is shown in.
FIGURE_TITLES = {
    "known_accuracy": ("Known-fact accuracy", "percentunit",
                       "Share of held-out facts the base model knew (HighlyKnown) that the model still answers correctly."),
    "hallucination_rate": ("Hallucination rate", "percentunit",
                           "Wrong answers on the known probe: facts the base model knew and the tuned model now gets wrong."),
    "new_fact_accuracy": ("New-fact accuracy", "percentunit",
                          "Accuracy on the training facts the base model did not know: what fine-tuning taught."),
    "abstention_rate": ("Abstention rate", "percentunit",
                        "Share of unknown-probe questions answered with an abstention ('I don't know')."),
    "fabrication_rate": ("Fabrication rate", "percentunit",
                         "Share of unknown-probe questions answered wrongly instead of abstaining."),
    "drift_kl": ("Drift KL (nats/token)", "none",
                 "Mean per-token KL(base || tuned) over a fixed held-out prompt set."),
    "param_drift_l2": ("Parameter drift", "percentunit", "||theta - theta0|| / ||theta0||."),
    "eval_loss": ("Eval loss (new facts)", "none", "Cross-entropy on the new facts' answers."),
}
assert set(FIGURE_TITLES) == set(c.FIGURES), "every contract figure needs a title here"


@dataclass
class Query:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    title: str
    queries: list[Query]
    type: str = "timeseries"
    unit: str = "none"
    description: str = ""
    w: int = 8
    h: int = 8
    extra: dict = field(default_factory=dict)


def _figure(figure: str, model: str | None = None) -> str:
    m = f', model="{model}"' if model else ""
    return f"max by ({BY_JOB}, model) ({c.figure_metric(figure)}{{{SEL}{m}}})"


def fleet_panels() -> list[Panel]:
    sel = f"{{{SEL}}}"
    return [
        Panel("Jobs by phase", [Query(f"sum by (phase) ({c.OP_JOBS})", "{{phase}}", instant=True)],
              type="stat", w=8, h=5, description="FineTuneJobs the operator sees, per phase."),
        Panel("Jobs by method", [Query(f"sum by (method) ({c.OP_JOBS})", "{{method}}", instant=True)],
              type="stat", w=8, h=5, description="FineTuneJobs the operator sees, per method."),
        Panel("Restarts (total per job)", [Query(f"max by ({BY_JOB}) ({c.OP_JOB_RESTARTS}{sel})", "{{namespace}}/{{job}}")],
              w=8, h=5, description="Group restarts of each job (status.restarts)."),
        Panel("Job phase", [Query(f"max by ({BY_JOB}, phase) ({c.OP_JOB_PHASE}{sel}) == 1",
                                  "{{namespace}}/{{job}}: {{phase}}")],
              type="state-timeline", w=24, h=6, description="Current phase of each job, over time."),
        Panel("Progress", [Query(f"max by ({BY_JOB}) ({c.OP_JOB_PROGRESS}{sel})", "{{namespace}}/{{job}}")],
              unit="percentunit", description="Training progress from the job's status (step / total steps)."),
        Panel("Hallucination rate, latest evaluation (all jobs)",
              [Query(f"max by ({BY_JOB}, method) ({c.job_figure_metric('hallucination_rate')}{sel})",
                     "{{namespace}}/{{job}} ({{method}})")],
              unit="percentunit",
              description="The operator's mirror of status.training.metrics: stays after the pods are gone."),
        Panel("Drift KL, latest evaluation (all jobs)",
              [Query(f"max by ({BY_JOB}, method) ({c.job_figure_metric('drift_kl')}{sel})",
                     "{{namespace}}/{{job}} ({{method}})")],
              description="The operator's mirror of status.training.metrics.driftKL."),
        Panel("Latest figures per job", [
            Query(f"max by ({BY_JOB}, method) ({c.job_figure_metric(f)}{sel})", f, instant=True)
            for f in c.FIGURES],
            type="table", w=24, h=8,
            description="One row per job and figure (the latest tuned evaluation, from status)."),
        Panel("Group restarts (last hour)",
              [Query(f"sum by ({BY_JOB}) (increase({c.OP_GROUP_RESTARTS}_total{sel}[1h]))", "{{namespace}}/{{job}}")],
              description="Whole-group restarts the operator performed after a worker failed."),
        Panel("Reconcile duration p95",
              [Query(f"histogram_quantile(0.95, sum by (le) (rate({c.OP_RECONCILE_SECONDS}_bucket[$__rate_interval])))",
                     "p95")], unit="s", description="Operator reconcile latency."),
        Panel("Reconcile errors / s",
              [Query(f"sum(rate({c.OP_RECONCILE_ERRORS}_total[$__rate_interval]))", "errors")],
              description="Failed reconciles (the operator retries them)."),
    ]


def job_panels() -> list[Panel]:
    sel = f"{{{SEL}}}"
    panels = [
        Panel("Hallucination rate: tuned, reference and base",
              [Query(_figure("hallucination_rate"), "{{namespace}}/{{job}} {{model}}")], unit="percentunit", w=12,
              description=FIGURE_TITLES["hallucination_rate"][2]),
        Panel("Hallucination increase over the reference",
              [Query(f'{_figure("hallucination_rate", "tuned")} - ignoring(model) '
                     f'{_figure("hallucination_rate", "reference")}', "{{namespace}}/{{job}}")],
              unit="percentunit", w=12,
              description="Tuned minus reference hallucination rate (the reference: the format-stage snapshot, or "
                          "the base model): what the job's guardrail budget limits."),
    ]
    for figure in c.FIGURES:
        if figure == "hallucination_rate":
            continue
        title, unit, desc = FIGURE_TITLES[figure]
        panels.append(Panel(f"{title}: tuned, reference and base", [Query(_figure(figure), "{{namespace}}/{{job}} {{model}}")],
                            unit=unit, description=desc))
    panels += [
        Panel("Training loss", [Query(f"max by ({BY_JOB}) ({c.TRAIN_LOSS}{sel})", "{{namespace}}/{{job}}")],
              description="Training loss at the last optimizer step (CE, plus the KL term for self-distill)."),
        Panel("Tokens / s", [
            Query(f"sum by ({BY_JOB}) ({c.TRAIN_TOKENS_PER_SECOND}{sel})", "{{namespace}}/{{job}} (reported)"),
            Query(f"sum by ({BY_JOB}) (rate({c.TRAIN_TOKENS}_total{sel}[$__rate_interval]))",
                  "{{namespace}}/{{job}} (from counter)")],
            description="Training throughput."),
        Panel("Step", [
            Query(f"max by ({BY_JOB}) ({c.TRAIN_STEP}{sel})", "{{namespace}}/{{job}} step"),
            Query(f"max by ({BY_JOB}) ({c.TRAIN_TOTAL_STEPS}{sel})", "{{namespace}}/{{job}} total")],
            description="Optimizer step and the planned total."),
        Panel("Seconds since last step",
              [Query(f"time() - max by ({BY_JOB}) ({c.TRAIN_LAST_STEP_TIMESTAMP}{sel})", "{{namespace}}/{{job}}")],
              unit="s", description="Grows while training is stuck; the TuneguardNoTrainingProgress alert watches it."),
        Panel("Trainer stage", [Query(f"max by ({BY_JOB}, stage) ({c.TRAIN_STAGE}{sel}) == 1", "{{job}} {{stage}}")],
              description="Which stage each job's trainer is in (1 while in it): loading, triage, format (the "
                          "format stage), training, evaluating, saving, done."),
        Panel("Knowledge triage of the training facts",
              [Query(f"max by ({BY_JOB}, category) ({c.TRIAGE_EXAMPLES}{sel})", "{{job}} {{category}}", instant=True)],
              type="bargauge", description="SliCK categories of the training facts as the base model knows them."),
        Panel("Your evaluation sets: accuracy",
              [Query(f"max by ({BY_JOB}, set, model) ({c.EVAL_SET_ACCURACY}{sel})", "{{job}} {{set}} {{model}}")],
              unit="percentunit", description="Accuracy on each of the job's spec.evaluation.sets (its own questions) "
                                              "for the tuned model at every evaluation, and for the reference and base."),
        Panel("Robustness gap under shifts (known probe)",
              [Query(f"max by ({BY_JOB}, shift, model) ({c.ROBUSTNESS_GAP}{{{SEL},probe=\"known\"}})",
                     "{{job}} {{shift}} {{model}}")],
              unit="percentunit", description="Known-probe accuracy asked unshifted minus asked shifted (paraphrase, "
                                              "seeded noise, the other prompt format), for the tuned model at every "
                                              "evaluation and for the reference: a growing gap is learning the form."),
        Panel("Leaked probe examples",
              [Query(f"max by ({BY_JOB}, kind) ({c.LEAKAGE_EXAMPLES}{sel})", "{{job}} {{kind}}", instant=True)],
              type="bargauge", description="Probe questions that duplicate a training question (exact, near), "
                                           "training duplicates, and the probes dropped for it (spec.leakage)."),
        Panel("Guardrail breaches",
              [Query(f"sum by ({BY_JOB}, guardrail) ({c.GUARDRAIL_BREACHES}_total{sel})", "{{job}} {{guardrail}}")],
              description="Evaluations that exceeded the job's hallucination or drift budget."),
    ]
    return panels


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict:
    ds = {"type": "prometheus", "uid": "${datasource}"}
    targets = []
    for i, q in enumerate(p.queries):
        t = {"datasource": ds, "expr": q.expr, "legendFormat": q.legend or "__auto", "refId": chr(ord("A") + i)}
        if q.instant or p.type in ("table", "stat", "bargauge"):
            t.update(instant=True, range=False)
            if p.type == "table":
                t["format"] = "table"
        else:
            t.update(instant=False, range=True)
        targets.append(t)
    d = {
        "id": pid, "type": p.type, "title": p.title, "description": p.description, "datasource": ds,
        "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "options": {},
        "targets": targets,
    }
    if p.type == "timeseries":
        d["options"] = {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}}
    if p.type == "table":
        d["transformations"] = [{"id": "merge", "options": {}}]
    d.update(p.extra)
    return d


def _layout(rows: list[tuple[str, list[Panel]]]) -> list[dict]:
    out, pid, y = [], 1, 0
    for title, panels in rows:
        out.append({"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y, x, row_h = pid + 1, y + 1, 0, 0
        for p in panels:
            if x + p.w > 24:
                x, y, row_h = 0, y + row_h, 0
            out.append(_panel_json(p, pid, x, y))
            pid, x, row_h = pid + 1, x + p.w, max(row_h, p.h)
        y += row_h
    return out


def _variable(name: str, label: str, query: str) -> dict:
    return {
        "name": name, "label": label, "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1, "hide": 0, "options": [],
    }


def build_dashboard() -> dict:
    return {
        "uid": DASHBOARD_UID,
        "title": "Tuneguard: fine-tuning hallucination and drift",
        "description": "Per-job and fleet views of FineTuneJobs: hallucination (tuned vs reference and base), known- and "
                       "new-fact accuracy, abstention, fabrication, drift, loss, throughput, phases and restarts. "
                       "Generated by tuneguard/dashboard.py from tuneguard/contract.py.",
        "tags": ["tuneguard", "fine-tuning", "hallucination"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "timezone": "",
        "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            _variable("namespace", "Namespace", f"label_values({c.OP_JOB_PHASE}, namespace)"),
            _variable("job", "Job", f'label_values({c.OP_JOB_PHASE}{{namespace=~"$namespace"}}, job)'),
        ]},
        "panels": _layout([("Fleet", fleet_panels()), ("Per job: live figures from the trainer", job_panels())]),
    }


def render_dashboard() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=False) + "\n"


def queries(dashboard: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    d = dashboard or build_dashboard()
    return [(p["title"], t["expr"]) for p in d["panels"] if p["type"] != "row" for t in p.get("targets", [])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"write {DASHBOARD_FILE} (relative to the repo root)")
    args = ap.parse_args(argv)
    text = render_dashboard()
    if args.write:
        path = Path(__file__).resolve().parents[1] / DASHBOARD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
