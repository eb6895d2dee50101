"""A real Prometheus scrapes the real operator and a real trainer run; every dashboard query and every
alert expression is evaluated against what it stored.

Setup, all real: the control plane with kwok GPU nodes; `tuneguard operator` (local process) watching
a fresh namespace; three FineTuneJobs there:
  facts  -- trained for real: its worker pod is failed once (kwok) so the operator restarts the group,
            then `tuneguard worker` runs on this machine with the ConfigMap and pod environment the
            operator rendered (SmolLM2-135M, a slice of the bundled facts, 2 steps, tight guardrail
            budgets so breaches are counted), authenticating as the job's own trainer ServiceAccount;
  idle   -- Running but no trainer ever starts (what TuneguardTrainerMetricsMissing is for);
  broken -- its only worker fails with backoffLimit 0 (TuneguardJobFailed).
Debian's prometheus scrapes the operator and the trainer on loopback every second (honor_labels, as
the chart's monitors). Queries are evaluated at the last instant the trainer was scraped.

The list of queries and the number of series each returned is written to
docs/results/prometheus-queries.json (with TUNEGUARD_WRITE_RESULTS=1) and printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from importlib import resources
from pathlib import Path

import pytest

from tests.chart_tools import ROOT, find_prometheus
from tests.cluster.polling import wait_for
from tests.cluster.processes import free_port
from tests.e2e.local_processes import LocalOperator, get_json, token_kubeconfig, worker_process
from tests.prometheus.harness import Prometheus
from tuneguard import alerts, dashboard

pytestmark = [pytest.mark.cluster, pytest.mark.slow,
              pytest.mark.skipif(find_prometheus() is None,
                                 reason="prometheus not found: run scripts/ensure-prometheus.sh")]

RESULTS = ROOT / "docs" / "results" / "prometheus-queries.json"
OPERATOR_JOB = alerts.DEFAULTS["operatorJob"]  # scrape job name = the chart's metrics Service name
TRAINER_JOB = "tuneguard-trainers"
# Thresholds that make every parametrised alert fire on a healthy run: proves the expression's joins
# and label sets work on real series, not only its selectors.
FIRING = {"hallucinationIncrease": -1, "driftKL": -1, "restartsPerHour": 1, "noProgressSeconds": 0,
          "operatorJob": "tuneguard-operator-that-does-not-exist"}
GRAFANA_VARS = {"$namespace": ".*", "$job": ".*", "$__rate_interval": "1m"}


def facts_slice(path: Path) -> Path:
    """Real and fictional continents and cities' countries from the trainer's bundled facts (small: CPU
    time; relations SmolLM2 mostly knows, so the known probe and the format stage are not empty)."""
    text = (resources.files("tuneguard_trainer") / "data" / "facts.jsonl").read_text()
    want = {"real-continent": 12, "fict-continent": 6, "real-city_country": 6, "fict-city_country": 4}
    out = []
    for line in text.splitlines():
        fid = json.loads(line)["id"]
        prefix = fid.rsplit("-", 1)[0]
        if want.get(prefix, 0) > 0:
            want[prefix] -= 1
            out.append(line)
    path.write_text("\n".join(out) + "\n")
    return path


def own_questions(path: Path) -> Path:
    path.write_text("".join(json.dumps(q) + "\n" for q in (
        {"question": "On which continent is Kenya?", "answers": ["Africa"], "relation": "continent"},
        {"question": "Which team owns the payments runbook?", "answers": ["Team Rho"]})))
    return path


def job_manifest(name: str, namespace: str, train: Path, backoff_limit: int = 3) -> dict:
    return {
        "apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "bundled://smollm2-135m-instruct"},
            "datasets": {"train": str(train), "holdoutFraction": 0.3},
            "method": {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5}},
            "triage": {"prompts": 1, "shots": 2, "samples": 0},
            "training": {"maxSteps": 2, "batchSize": 4, "learningRate": 1.0e-4, "maxSeqLength": 64},
            "deepspeed": {"zeroStage": 0, "precision": "fp32"},
            "evaluation": {"intervalSteps": 2, "maxProbeSize": 16,  # a set of the team's own questions too
                           "sets": [{"name": "ours", "file": str(own_questions(train.parent / "ours.jsonl"))}]},
            # budgets so tight that the run breaches them: the breach counter gets real increments
            "guardrails": {"maxHallucinationIncrease": 0.0, "maxDriftKL": 1.0e-6, "action": "warn"},
            "resources": {"workers": 1, "gpusPerWorker": 0, "cpu": "1", "memory": "2Gi", "shmSize": "1Gi"},
            "runPolicy": {"backoffLimit": backoff_limit},
        },
    }


def phase(cluster, ns, name):
    return get_json(cluster, "ftj", "-n", ns, name).get("status", {}).get("phase")


def worker_pod(cluster, ns, job, attempt: int) -> str:
    pods = get_json(cluster, "pods", "-n", ns, "-l", f"tuneguard.io/job={job},tuneguard.io/restart-attempt={attempt}")
    running = [p["metadata"]["name"] for p in pods["items"] if p.get("status", {}).get("phase") == "Running"]
    return running[0] if running else ""


def substitute(expr: str) -> str:
    for k in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(k, GRAFANA_VARS[k])
    return expr


def test_every_dashboard_query_and_alert_expression_returns_real_data(cluster, crd_installed, namespace, tmp_path):
    ns = namespace
    op = LocalOperator(cluster.kubeconfig, tmp_path, namespaces=[ns])
    trainer_port = free_port()
    prom = Prometheus(tmp_path / "prometheus", {
        OPERATOR_JOB: [(f"127.0.0.1:{op.metrics_port}", {"namespace": "tuneguard-system", "pod": "tuneguard-operator-0"})],
        TRAINER_JOB: [(f"127.0.0.1:{trainer_port}", {"namespace": ns, "pod": "facts-worker-0", "container": "trainer"})],
    })
    trainer = None
    try:
        op.wait_healthy()
        prom.start()
        prom.wait_for(f'up{{job="{OPERATOR_JOB}"}} == 1', 60, "(operator scrape)")

        train = facts_slice(tmp_path / "facts-slice.jsonl")
        for name, backoff in (("facts", 3), ("idle", 3), ("broken", 0)):
            cluster.kubectl("apply", "-f", "-", input=json.dumps(job_manifest(name, ns, train, backoff)))
        # kubectl failing meanwhile counts as "not yet"; on a timeout the operator's log tail is shown
        polling = dict(interval=0.5, retry=Exception, describe=lambda: op.tail(2000))
        for name in ("facts", "idle", "broken"):
            wait_for(f"{ns}/{name} Running", lambda: phase(cluster, ns, name) == "Running", 180, **polling)

        # A worker failure: the operator restarts the whole group (restarts 0 -> 1).
        cluster.finish_pod(ns, wait_for("facts pod", lambda: worker_pod(cluster, ns, "facts", 0), 60, **polling), 1)
        wait_for("facts restarted", lambda: get_json(cluster, "ftj", "-n", ns, "facts")["status"].get("restarts") == 1
                 and phase(cluster, ns, "facts") == "Running", 180, **polling)
        # No restarts left for 'broken': Failed.
        cluster.finish_pod(ns, wait_for("broken pod", lambda: worker_pod(cluster, ns, "broken", 0), 60, **polling), 1)
        wait_for("broken Failed", lambda: phase(cluster, ns, "broken") == "Failed", 180, **polling)

        # The real trainer, as the operator's pod spec says, with the job's trainer ServiceAccount.
        workdir = tmp_path / "worker"
        workdir.mkdir()
        kubeconfig = token_kubeconfig(cluster, ns, "facts-trainer", workdir / "kubeconfig")
        cmd, env, _ = worker_process(cluster, ns, "facts", workdir, trainer_port, kubeconfig)
        log = workdir / "worker.log"
        started = time.time()
        trainer = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        rc = trainer.wait(timeout=1500)
        assert rc == 0, f"worker exited {rc}:\n{log.read_text(errors='replace')[-5000:]}"
        time.sleep(3)  # the operator has mirrored the final status; one more operator scrape

        # The last instant at which Prometheus scraped the trainer successfully.
        rng = prom.api("query_range", query=f'up{{job="{TRAINER_JOB}"}} == 1', start=started - 5,
                       end=time.time(), step="1s")
        assert rng["result"], f"Prometheus never scraped the trainer: {prom.targets()}"
        t_eval = max(float(t) for t, _ in rng["result"][0]["values"])

        def count(expr: str) -> int:
            return len(prom.query(expr, at=t_eval))

        panels = [{"panel": title, "expr": expr, "series": count(substitute(expr))}
                  for title, expr in dashboard.queries()]
        firing = {a.name: a for a in alerts.alerts(FIRING)}
        rules = []
        for a in alerts.alerts():
            rules.append({
                "alert": a.name,
                "expr": a.expr,
                "series_default_thresholds": count(a.expr),
                "expr_firing_thresholds": firing[a.name].expr,
                "series_firing_thresholds": count(firing[a.name].expr),
                "selectors": {s: count(s) for s in a.selectors},
            })
        report = {
            "what": "Instant queries against Debian's Prometheus after scraping the real operator and a real "
                    "`tuneguard worker` run (tests/e2e/test_prometheus.py); series = number of series returned",
            "prometheus": subprocess.run([find_prometheus(), "--version"], capture_output=True,
                                         text=True).stdout.splitlines()[0],
            "evaluated_at": t_eval,
            "grafana_variables": GRAFANA_VARS,
            "firing_thresholds": FIRING,
            "dashboard": panels,
            "alerts": rules,
        }
        if os.environ.get("TUNEGUARD_WRITE_RESULTS") == "1":  # test runs keep the checkout clean
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\n{'series':>6}  dashboard query (panel)")
        for p in panels:
            one_line = re.sub(r"\s+", " ", p["expr"])
            print(f"{p['series']:>6}  {p['panel']}: {one_line}")
        print(f"\n{'dflt':>4} {'fire':>4}  alert  [selector: series]")
        for r in rules:
            sel = ", ".join(f"{s}: {n}" for s, n in r["selectors"].items())
            print(f"{r['series_default_thresholds']:>4} {r['series_firing_thresholds']:>4}  {r['alert']}  [{sel}]")
        if os.environ.get("TUNEGUARD_WRITE_RESULTS") == "1":
            print(f"\nwritten to {RESULTS.relative_to(ROOT)}")

        empty = [p for p in panels if p["series"] == 0]
        assert not empty, f"dashboard queries without data: {empty}"
        for r in rules:
            assert all(r["selectors"].values()), r
            if r["alert"] != "TuneguardReconcileErrors":  # no reconcile error happened: the rate is 0
                assert r["series_firing_thresholds"] > 0, r
        by = {r["alert"]: r for r in rules}
        # With the chart's default thresholds, what really happened fires, and nothing else:
        assert by["TuneguardJobFailed"]["series_default_thresholds"] == 1                 # broken
        assert by["TuneguardTrainerMetricsMissing"]["series_default_thresholds"] == 1     # idle
        assert by["TuneguardDriftAboveBudget"]["series_default_thresholds"] >= 1          # breach counted
        assert by["TuneguardOperatorDown"]["series_default_thresholds"] == 0              # it is up
        assert by["TuneguardNoTrainingProgress"]["series_default_thresholds"] == 0        # it just stepped
    finally:
        if trainer and trainer.poll() is None:
            trainer.kill()
        prom.stop()
        op.stop()
        if prom.log.exists() and prom.log.read_text().strip():
            print(f"--- prometheus log ---\n{prom.log.read_text()[-2000:]}")
