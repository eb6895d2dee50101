"""The Grafana dashboard, built with Grafana's own SDK (grafana-foundation-sdk) from the metric names in
tuneguard.contract (one source).

    python -m tuneguard.dashboard            # print the JSON
    python -m tuneguard.dashboard --write    # rewrite charts/tuneguard/files/dashboards/tuneguard.json

A test fails when the committed JSON differs from what this module generates, so renaming a metric in
the contract cannot leave a panel querying a series that no longer exists.

What Prometheus sees: the trainer's and the operator's series carry their own `job` (the FineTuneJob's
name) and `namespace` labels; the chart's PodMonitor and ServiceMonitor scrape with honorLabels, so
those win over the target's. Template variables: datasource, namespace, job (multi-value, All = .*); every
per-job query selects on both. The "Operator" row is the exception: the operator's own health series
(reconcile latency, errors) belong to no job.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcm
from grafana_foundation_sdk.models import dashboard as gdm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from tuneguard import contract as c

DASHBOARD_UID = "tuneguard-jobs"
DASHBOARD_FILE = Path("charts/tuneguard/files/dashboards/tuneguard.json")
SEL = 'namespace=~"$namespace", job=~"$job"'  # every per-job selector
BY_JOB = "namespace, job"
DATASOURCE = gdm.DataSourceRef(type_val="prometheus", uid="${datasource}")
OPERATOR_ROW = "Operator"

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


PANEL_KINDS = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel,
               "bargauge": bargauge.Panel, "state-timeline": statetimeline.Panel}
INSTANT_KINDS = ("stat", "table", "bargauge")  # they show the latest value: instant queries


def query(expr: str, legend: str = "") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").range()


def panel(title: str, queries: list[prometheus.Dataquery], *, description: str, unit: str = "none",
          kind: str = "timeseries", w: int = 8, h: int = 8):
    """One panel; every panel reads the datasource variable and says what it shows and in what unit."""
    b = PANEL_KINDS[kind]().title(title).description(description).unit(unit).datasource(DATASOURCE).span(w).height(h)
    for ref, q in zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", queries):
        if kind in INSTANT_KINDS:
            q = q.instant()
        if kind == "table":
            q = q.format(PromQueryFormat.TABLE)
        b = b.with_target(q.ref_id(ref))
    if kind == "timeseries":
        b = (b.legend(gc.VizLegendOptions().display_mode(gcm.LegendDisplayMode.LIST)
                      .placement(gcm.LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(gc.VizTooltipOptions().mode(gcm.TooltipDisplayMode.MULTI)))
    if kind in ("stat", "bargauge"):
        b = b.reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    if kind == "table":
        b = b.show_header(True).with_transformation(gdm.DataTransformerConfig(id_val="merge", options={}))
    if kind == "state-timeline":
        b = b.show_value(gcm.VisibilityMode.AUTO).merge_values(True)
    return b


def _figure(figure: str, model: str | None = None) -> str:
    m = f', model="{model}"' if model else ""
    return f"max by ({BY_JOB}, model) ({c.figure_metric(figure)}{{{SEL}{m}}})"


def fleet_panels() -> list:
    sel = f"{{{SEL}}}"
    return [
        panel("Jobs by phase", [query(f"count by (phase) ({c.OP_JOB_PHASE}{sel} == 1)", "{{phase}}")],
              kind="stat", unit="short", w=8, h=5, description="FineTuneJobs the operator sees, per phase."),
        panel("Jobs by method", [query(f"count by (method) ({c.OP_JOB_PHASE}{sel} == 1)", "{{method}}")],
              kind="stat", unit="short", w=8, h=5, description="FineTuneJobs the operator sees, per method."),
        panel("Restarts (total per job)", [query(f"max by ({BY_JOB}) ({c.OP_JOB_RESTARTS}{sel})", "{{namespace}}/{{job}}")],
              unit="short", w=8, h=5, description="Group restarts of each job (status.restarts)."),
        panel("Job phase", [query(f"max by ({BY_JOB}, phase) ({c.OP_JOB_PHASE}{sel}) == 1",
                                  "{{namespace}}/{{job}}: {{phase}}")],
              kind="state-timeline", w=24, h=6, description="Current phase of each job, over time."),
        panel("Progress", [query(f"max by ({BY_JOB}) ({c.OP_JOB_PROGRESS}{sel})", "{{namespace}}/{{job}}")],
              unit="percentunit", description="Training progress from the job's status (step / total steps)."),
        panel("Hallucination rate, latest evaluation (all jobs)",
              [query(f"max by ({BY_JOB}, method) ({c.job_figure_metric('hallucination_rate')}{sel})",
                     "{{namespace}}/{{job}} ({{method}})")],
              unit="percentunit",
              description="The operator's mirror of status.training.metrics: stays after the pods are gone."),
        panel("Drift KL, latest evaluation (all jobs)",
              [query(f"max by ({BY_JOB}, method) ({c.job_figure_metric('drift_kl')}{sel})",
                     "{{namespace}}/{{job}} ({{method}})")],
              description="The operator's mirror of status.training.metrics.driftKL."),
        panel("Latest figures per job", [
            query(f"max by ({BY_JOB}, method) ({c.job_figure_metric(f)}{sel})", f)
            for f in c.FIGURES],
            kind="table", w=24, h=8,
            description="One row per job and figure (the latest tuned evaluation, from status)."),
        panel("Group restarts",
              [query(f"sum by ({BY_JOB}) (increase({c.OP_GROUP_RESTARTS}_total{sel}[$__rate_interval]))",
                     "{{namespace}}/{{job}}")],
              unit="short", description="Whole-group restarts the operator performed after a worker failed, per interval."),
    ]


def operator_panels() -> list:
    """The operator's own health: series of the operator process, not of a job (no job label to select on)."""
    return [
        panel("Reconcile duration p95",
              [query(f"histogram_quantile(0.95, sum by (le) (rate({c.OP_RECONCILE_SECONDS}_bucket[$__rate_interval])))",
                     "p95")], unit="s", w=12, description="Operator reconcile latency."),
        panel("Reconcile errors / s",
              [query(f"sum(rate({c.OP_RECONCILE_ERRORS}_total[$__rate_interval]))", "errors")], unit="reqps", w=12,
              description="Failed reconciles (the operator retries them)."),
    ]


def job_panels() -> list:
    sel = f"{{{SEL}}}"
    panels = [
        panel("Hallucination rate: tuned, reference and base",
              [query(_figure("hallucination_rate"), "{{namespace}}/{{job}} {{model}}")], unit="percentunit", w=12,
              description=FIGURE_TITLES["hallucination_rate"][2]),
        panel("Hallucination increase over the reference",
              [query(f'{_figure("hallucination_rate", "tuned")} - ignoring(model) '
                     f'{_figure("hallucination_rate", "reference")}', "{{namespace}}/{{job}}")],
              unit="percentunit", w=12,
              description="Tuned minus reference hallucination rate (the reference: the format-stage snapshot, or "
                          "the base model): what the job's guardrail budget limits."),
    ]
    for figure in c.FIGURES:
        if figure == "hallucination_rate":
            continue
        title, unit, desc = FIGURE_TITLES[figure]
        panels.append(panel(f"{title}: tuned, reference and base", [query(_figure(figure), "{{namespace}}/{{job}} {{model}}")],
                            unit=unit, description=desc))
    panels += [
        panel("Training loss", [query(f"max by ({BY_JOB}) ({c.TRAIN_LOSS}{sel})", "{{namespace}}/{{job}}")],
              description="Training loss at the last optimizer step (CE, plus the KL term for self-distill)."),
        panel("Tokens / s", [
            query(f"sum by ({BY_JOB}) ({c.TRAIN_TOKENS_PER_SECOND}{sel})", "{{namespace}}/{{job}} (reported)"),
            query(f"sum by ({BY_JOB}) (rate({c.TRAIN_TOKENS}_total{sel}[$__rate_interval]))",
                  "{{namespace}}/{{job}} (from counter)")],
            description="Training throughput."),
        panel("Step", [
            query(f"max by ({BY_JOB}) ({c.TRAIN_STEP}{sel})", "{{namespace}}/{{job}} step"),
            query(f"max by ({BY_JOB}) ({c.TRAIN_TOTAL_STEPS}{sel})", "{{namespace}}/{{job}} total")],
            description="Optimizer step and the planned total."),
        panel("Seconds since last step",
              [query(f"time() - max by ({BY_JOB}) ({c.TRAIN_LAST_STEP_TIMESTAMP}{sel})", "{{namespace}}/{{job}}")],
              unit="s", description="Grows while training is stuck; the TuneguardNoTrainingProgress alert watches it."),
        panel("Trainer stage", [query(f"max by ({BY_JOB}, stage) ({c.TRAIN_STAGE}{sel}) == 1", "{{job}} {{stage}}")],
              description="Which stage each job's trainer is in (1 while in it): loading, triage, format (the "
                          "format stage), training, evaluating, saving, done."),
        panel("Knowledge triage of the training facts",
              [query(f"max by ({BY_JOB}, category) ({c.TRIAGE_EXAMPLES}{sel})", "{{job}} {{category}}")],
              kind="bargauge", unit="short", description="SliCK categories of the training facts as the base model knows them."),
        panel("Your evaluation sets: accuracy",
              [query(f"max by ({BY_JOB}, set, model) ({c.EVAL_SET_ACCURACY}{sel})", "{{job}} {{set}} {{model}}")],
              unit="percentunit", description="Accuracy on each of the job's spec.evaluation.sets (its own questions) "
                                              "for the tuned model at every evaluation, and for the reference and base."),
        panel("Robustness gap under shifts (known probe)",
              [query(f"max by ({BY_JOB}, shift, model) ({c.ROBUSTNESS_GAP}{{{SEL},probe=\"known\"}})",
                     "{{job}} {{shift}} {{model}}")],
              unit="percentunit", description="Known-probe accuracy asked unshifted minus asked shifted (paraphrase, "
                                              "seeded noise, the other prompt format), for the tuned model at every "
                                              "evaluation and for the reference: a growing gap is learning the form."),
        panel("Leaked probe examples",
              [query(f"max by ({BY_JOB}, kind) ({c.LEAKAGE_EXAMPLES}{sel})", "{{job}} {{kind}}")],
              kind="bargauge", unit="short", description="Probe questions that duplicate a training question (exact, near), "
                                           "training duplicates, and the probes dropped for it (spec.leakage)."),
        panel("Guardrail breaches",
              [query(f"sum by ({BY_JOB}, guardrail) (increase({c.GUARDRAIL_BREACHES}_total{sel}[$__rate_interval]))",
                     "{{job}} {{guardrail}}")],
              unit="short", description="Evaluations that exceeded the job's hallucination or drift budget, per interval."),
    ]
    return panels


def _variable(name: str, label: str, expr: str) -> gd.QueryVariable:
    return (gd.QueryVariable(name).label(label).query(expr).datasource(DATASOURCE).refresh(
        gdm.VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*").sort(
        gdm.VariableSort.ALPHABETICAL_ASC).current(gdm.VariableOption(selected=True, text=["All"], value=["$__all"])))


def build_dashboard() -> dict:
    b = (gd.Dashboard("Tuneguard: fine-tuning hallucination and drift").uid(DASHBOARD_UID)
         .description("Per-job and fleet views of FineTuneJobs: hallucination (tuned vs reference and base), known- and "
                      "new-fact accuracy, abstention, fabrication, drift, loss, throughput, phases and restarts. "
                      "Generated by tuneguard/dashboard.py from tuneguard/contract.py.")
         .tags(["tuneguard", "fine-tuning", "hallucination"]).editable().tooltip(gdm.DashboardCursorSync.CROSSHAIR)
         .time("now-6h", "now").refresh("30s").timezone("browser")
         .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus"))
         .with_variable(_variable("namespace", "Namespace", f"label_values({c.OP_JOB_PHASE}, namespace)"))
         .with_variable(_variable("job", "Job", f'label_values({c.OP_JOB_PHASE}{{namespace=~"$namespace"}}, job)')))
    for title, panels in (("Fleet", fleet_panels()), ("Per job: live figures from the trainer", job_panels()),
                          (OPERATOR_ROW, operator_panels())):
        b = b.with_row(gd.Row(title))
        for p in panels:
            b = b.with_panel(p)
    d = json.loads(json.dumps(b.build(), cls=JSONEncoder))
    for pid, p in zip(itertools.count(1), d["panels"]):  # stable ids: links and the lint refer to them
        p["id"] = pid
    return d


def render_dashboard() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=False) + "\n"


def rows(dashboard: dict | None = None) -> list[tuple[str, list[dict]]]:
    """(row title, its panels) in order."""
    out: list[tuple[str, list[dict]]] = []
    for p in (dashboard or build_dashboard())["panels"]:
        if p["type"] == "row":
            out.append((p["title"], []))
        else:
            out[-1][1].append(p)
    return out


def queries(dashboard: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    return [(p["title"], t["expr"]) for _, panels in rows(dashboard) for p in panels for t in p.get("targets", [])]


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
