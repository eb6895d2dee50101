"""The Helm chart, the dashboard and the alert rules, checked without a cluster.

Generated files must equal what their Python source generates; promtool checks and unit-tests the
rules; helm (when cached by scripts/build-control-plane.sh) lints the chart strictly, rejects bad
values through values.schema.json and renders what each mode promises.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.chart_tools import (CHART, HELM_MISSING, PROMTOOL_MISSING, ROOT, by_kind, find_helm, find_promtool,
                               helm, template)
from tests.prometheus import alert_tests
from tuneguard import alerts, contract, dashboard
from tuneguard.crd import CRD_FILE

needs_helm = pytest.mark.skipif(find_helm() is None, reason=HELM_MISSING)
needs_promtool = pytest.mark.skipif(find_promtool() is None, reason=PROMTOOL_MISSING)
REGEN = "run `make generate`"


# ------------------------------------------------------------------------------ generated files


def test_chart_crds_are_the_repository_crds():
    assert (CHART / "crds" / CRD_FILE).read_text() == (ROOT / "crds" / CRD_FILE).read_text(), \
        "charts/tuneguard/crds/ is stale: cp crds/*.yaml charts/tuneguard/crds/"
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (ROOT / "crds").iterdir())


def test_dashboard_json_is_generated():
    assert (ROOT / dashboard.DASHBOARD_FILE).read_text() == dashboard.render_dashboard(), REGEN


def test_rules_and_prometheusrule_template_are_generated():
    assert (ROOT / alerts.RULES_FILE).read_text() == alerts.render_rules(), REGEN
    assert (ROOT / alerts.TEMPLATE_FILE).read_text() == alerts.render_template(), REGEN
    assert (ROOT / alert_tests.TEST_FILE).read_text() == alert_tests.render_tests(), REGEN


def _known_metric_names() -> set[str]:
    names = {contract.figure_metric(f) for f in contract.FIGURES}
    names |= {contract.job_figure_metric(f) for f in contract.FIGURES}
    names |= {v for k, v in vars(contract).items() if k.isupper() and isinstance(v, str) and v.startswith("tuneguard_")}
    return names


def _metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\b(tuneguard_[a-z0-9_]+)", expr))


def test_every_query_reads_contract_metrics():
    known = _known_metric_names()
    exprs = [e for _, e in dashboard.queries()] + [a.expr for a in alerts.alerts()]
    for expr in exprs:
        for m in _metrics_in(expr):
            base = re.sub(r"_(total|bucket|sum|count)$", "", m)
            assert m in known or base in known, f"{m} in {expr!r} is not a tuneguard.contract metric"


def test_dashboard_shows_every_figure_tuned_vs_base_and_the_fleet():
    d = dashboard.build_dashboard()
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert set(variables) >= {"datasource", "namespace", "job"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    titles = {p["title"] for p in d["panels"]}
    exprs = " ".join(e for _, e in dashboard.queries(d))
    for f in contract.FIGURES:
        assert contract.figure_metric(f) + "{" in exprs, f"no per-job panel for {f}"
        assert contract.job_figure_metric(f) + "{" in exprs, f"no fleet query for {f}"
    for metric in (contract.TRAIN_LOSS, contract.TRAIN_TOKENS_PER_SECOND, contract.OP_JOB_PHASE,
                   contract.OP_JOB_RESTARTS, contract.TRIAGE_EXAMPLES, contract.EVAL_SET_ACCURACY,
                   contract.LEAKAGE_EXAMPLES):
        assert metric in exprs, metric
    assert "Hallucination rate: tuned, reference and base" in titles
    # every panel reads through the datasource variable; per-job queries honour both variables
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}"
        for t in p["targets"]:
            if contract.OP_JOBS not in t["expr"] and "operator_" not in t["expr"]:
                assert 'namespace=~"$namespace"' in t["expr"] and 'job=~"$job"' in t["expr"], t["expr"]
    # panels do not overlap
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
        assert g["x"] + g["w"] <= 24


def test_alerts_cover_the_issue_and_carry_runbooks():
    names = {a.name for a in alerts.alerts()}
    assert names >= {"TuneguardHallucinationBudgetExceeded", "TuneguardDriftAboveBudget", "TuneguardJobFailed",
                     "TuneguardJobRestartingRepeatedly", "TuneguardOperatorDown", "TuneguardNoTrainingProgress"}
    for rule in alerts.rule_groups()["groups"][0]["rules"]:
        ann = rule["annotations"]
        assert {"summary", "description", "runbook"} <= set(ann), rule["alert"]
        assert len(ann["runbook"]) > 80, f"{rule['alert']}: the runbook should say what to do"
        assert rule["labels"]["severity"] in ("warning", "critical")
    # Every alert is tested by promtool, firing at least once.
    tested = {t["alertname"] for g in alert_tests.build_tests()["tests"] for t in g["alert_rule_test"] if t["exp_alerts"]}
    assert tested == names


def test_values_alert_defaults_are_the_generators():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key, value in values["alerts"].items():
        assert alerts.DEFAULTS[key] == value, key
    assert set(values["alerts"]) == set(alerts.DEFAULTS) - {"operatorJob"}
    # the plain rules' operator job is what the chart's metrics Service is called for release "tuneguard"
    assert alerts.DEFAULTS["operatorJob"] == "tuneguard-operator"


# ------------------------------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_checks_the_rules():
    p = subprocess.run([find_promtool(), "check", "rules", str(ROOT / alerts.RULES_FILE)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alerts.alerts())} rules found" in p.stdout + p.stderr


@needs_promtool
def test_promtool_unit_tests_of_every_alert():
    p = subprocess.run([find_promtool(), "test", "rules", alert_tests.TEST_FILE.name],
                       cwd=ROOT / alert_tests.TEST_FILE.parent, capture_output=True, text=True)
    print(p.stdout + p.stderr)
    assert p.returncode == 0 and "SUCCESS" in p.stdout + p.stderr, p.stdout + p.stderr


@needs_promtool
def test_promtool_unit_tests_fail_when_a_threshold_is_wrong(tmp_path):
    """The unit tests really bite: with a laxer hallucination budget the 'forgetful' case must fail."""
    rules = tmp_path / alerts.RULES_FILE
    rules.parent.mkdir(parents=True)
    rules.write_text(alerts.render_rules({"hallucinationIncrease": 0.5}))
    tests_dir = tmp_path / alert_tests.TEST_FILE.parent
    tests_dir.mkdir(parents=True)
    (tests_dir / alert_tests.TEST_FILE.name).write_text(alert_tests.render_tests())
    p = subprocess.run([find_promtool(), "test", "rules", alert_tests.TEST_FILE.name], cwd=tests_dir,
                       capture_output=True, text=True)
    assert p.returncode != 0 and "TuneguardHallucinationBudgetExceeded" in p.stdout + p.stderr


# ------------------------------------------------------------------------------------------ RBAC


def _helper_rules() -> list[dict]:
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    block = text.split('define "tuneguard.rbacRules" -}}', 1)[1].split("{{- end }}", 1)[0]
    return yaml.safe_load(block)


def _allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] and
               not r.get("resourceNames") for r in rules)


def test_rbac_lets_the_operator_create_the_trainer_role():
    """RBAC's escalation check: the operator may only create a Role whose rules it holds itself."""
    render = pytest.importorskip("tuneguard_operator.render", reason="the operator is not merged yet")
    from tuneguard import api
    rules = _helper_rules()
    job = api.FineTuneJob.model_validate(yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text()))
    job.metadata.namespace = "ml"
    role = render.role(job, "uid-1")
    for r in role["rules"]:
        for g in r["apiGroups"]:
            for res in r["resources"]:
                for verb in r["verbs"]:
                    assert _allows(rules, g, res, verb), f"operator lacks {verb} {res} needed to grant it"


def test_rbac_covers_every_kind_the_operator_writes_and_nothing_cluster_scoped():
    from tuneguard import kube

    rules = _helper_rules()
    for kind, (prefix, plural) in kube.KINDS.items():
        if kind in ("Lease", "Node"):  # leader election's Role, the node reader's ClusterRole: their own objects
            continue
        group = "" if prefix == "/api/v1" else prefix.split("/")[2]
        verbs = ["create"] if kind == "Event" else ["create", "get", "patch"]
        if kind == "FineTuneJob":
            verbs = ["get", "list", "watch", "patch", "delete"]
        if kind == "Pod":
            verbs = ["list", "delete"]
        if kind == "Job":
            verbs = ["get", "list", "watch", "create", "patch", "delete"]
        if kind == "Workload":
            verbs = ["list", "patch"]
        for verb in verbs:
            assert _allows(rules, group, plural, verb), f"{verb} {plural}"
    granted = {res for r in rules for res in r["resources"]}
    assert not granted & {"secrets", "nodes", "namespaces", "clusterroles", "clusterrolebindings",
                          "customresourcedefinitions", "*"}
    assert not any("*" in r["verbs"] or "escalate" in r["verbs"] or "bind" in r["verbs"] for r in rules)
    pods = [r for r in rules if "pods" in r["resources"]]
    assert [r["verbs"] for r in pods] == [["list", "delete"]], "the operator lists pods and force-deletes lost ones"


# ------------------------------------------------------------------------------------------ helm


@needs_helm
def test_helm_lint_strict_passes_in_every_mode(tmp_path):
    for args in ([], ["--set", "watch.clusterWide=false"],
                 ["--set", "watch.clusterWide=false", "--set", "watch.namespaces={ml,research}"],
                 ["--set", "monitoring.force=true"], ["--set", "grafana.dashboards.enabled=false"]):
        p = helm("lint", "--strict", str(CHART), *args)
        assert "1 chart(s) linted, 0 chart(s) failed" in p.stdout, p.stdout


@pytest.mark.parametrize("bad, message", [
    ({"watch": {"clusterWide": "yes"}}, "clusterWide"),
    ({"watch": {"clusterWide": False, "namespaces": ["ML_Team"]}}, "namespaces"),
    ({"alerts": {"hallucinationIncrease": 5}}, "hallucinationIncrease"),
    ({"operator": {"replicas": 2, "leaderElection": {"enabled": False}}}, "leaderElection"),
    ({"operator": {"replicas": 9}}, "replicas"),
    ({"operator": {"logFormat": "xml"}}, "logFormat"),
    ({"monitoring": {"serviceMonitor": {"interval": "soon"}}}, "interval"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"watchNamespace": "ml"}, "watchNamespace"),
])
@needs_helm
def test_bad_values_are_rejected_by_the_schema(tmp_path, bad, message):
    f = tmp_path / "bad-values.yaml"
    f.write_text(yaml.safe_dump(bad))
    for cmd in (["lint", "--strict", str(CHART), "-f", str(f)], ["template", "x", str(CHART), "-f", str(f)]):
        p = helm(*cmd, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0, f"helm {cmd[0]} accepted {bad}"
        assert "values don't meet the specifications of the schema" in out and message in out, out


@needs_helm
def test_cluster_wide_mode_renders_a_cluster_role_and_restricted_deployment():
    objs = template()
    assert len(by_kind(objs, "CustomResourceDefinition")) == 1
    assert [o["metadata"]["name"] for o in by_kind(objs, "ClusterRole")] == ["tuneguard-operator",
                                                                            "tuneguard-node-reader"]
    assert len(by_kind(objs, "ClusterRoleBinding")) == 2
    (dep,) = by_kind(objs, "Deployment")
    spec = dep["spec"]
    # two replicas, one leading through the Lease: a rollout brings the new pod up before the old one goes
    assert spec["replicas"] == 2 and spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["tuneguard", "operator"]
    assert "--leader-elect" in c["args"] and "--leader-election-id=tuneguard-operator" in c["args"]
    (pdb,) = by_kind(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    (lease_role,) = by_kind(objs, "Role")
    assert lease_role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                    "verbs": ["get", "create", "update"]}]
    assert "--all-namespaces" in c["args"] and "--metrics-port=8080" in c["args"] and "--health-port=8081" in c["args"]
    assert c["livenessProbe"]["httpGet"]["port"] == "health" and c["readinessProbe"]["httpGet"]["port"] == "health"
    assert c["resources"]["limits"] and c["resources"]["requests"]
    # Pod Security Standard "restricted"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["serviceAccountName"] == "tuneguard"
    (svc,) = by_kind(objs, "Service")
    assert svc["metadata"]["name"] == alerts.DEFAULTS["operatorJob"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


@needs_helm
def test_namespaced_mode_renders_roles_only_in_watched_namespaces():
    objs = template("--set", "watch.clusterWide=false", "--set", "watch.namespaces={ml,research}")
    # cluster-scoped: only reading nodes (to tell a lost node), which rbac.readNodes=false turns off
    (reader,) = by_kind(objs, "ClusterRole")
    assert reader["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    assert [b["roleRef"]["name"] for b in by_kind(objs, "ClusterRoleBinding")] == [reader["metadata"]["name"]]
    off = template("--set", "watch.clusterWide=false", "--set", "rbac.readNodes=false")
    assert not by_kind(off, "ClusterRole") and not by_kind(off, "ClusterRoleBinding")
    watch_roles = [o for o in by_kind(objs, "Role") if not o["metadata"]["name"].endswith("-leader-election")]
    assert sorted(o["metadata"]["namespace"] for o in watch_roles) == ["ml", "research"]
    for rb in by_kind(objs, "RoleBinding"):
        assert rb["subjects"] == [{"kind": "ServiceAccount", "name": "tuneguard", "namespace": "tuneguard-system"}]
    (dep,) = by_kind(objs, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml" in args and "--namespace=research" in args and "--all-namespaces" not in args
    # default: the release namespace
    objs = template("--set", "watch.clusterWide=false")
    assert [o["metadata"]["namespace"] for o in by_kind(objs, "Role")] == ["tuneguard-system"] * 2  # + the Lease's


@needs_helm
def test_monitoring_objects_only_with_the_prometheus_operator_api():
    kinds = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not kinds & {o["kind"] for o in template()}
    for args in (["--api-versions", "monitoring.coreos.com/v1"], ["--set", "monitoring.force=true"]):
        objs = template(*args)
        assert kinds <= {o["kind"] for o in objs}, args
    objs = template("--api-versions", "monitoring.coreos.com/v1", "--set", "monitoring.enabled=false")
    assert not kinds & {o["kind"] for o in objs}
    objs = template("--set", "monitoring.force=true", "--set", "monitoring.labels.release=kps")
    (pm,) = by_kind(objs, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {contract.LABEL_ROLE: "worker",  # rank 0 serves them
                                                     "batch.kubernetes.io/job-completion-index": "0"}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == contract.METRICS_PORT_NAME
    assert pm["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (sm,) = by_kind(objs, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True and sm["metadata"]["labels"]["release"] == "kps"
    (rule,) = by_kind(objs, "PrometheusRule")
    # The PrometheusRule with default values is exactly the plain rules file promtool tested.
    plain = yaml.safe_load((ROOT / alerts.RULES_FILE).read_text())
    assert rule["spec"] == plain
    objs = template("--set", "monitoring.force=true", "--set-json", "alerts.driftKL=0.25", "--set",
                    "alerts.noProgressSeconds=600", "--set", "fullnameOverride=tg")
    (rule,) = by_kind(objs, "PrometheusRule")
    got = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert "> 0.25" in got["TuneguardDriftAboveBudget"]["expr"]
    assert "> 600" in got["TuneguardNoTrainingProgress"]["expr"]
    assert got["TuneguardTrainerMetricsMissing"]["for"] == "10m"
    assert 'up{job="tg-operator"}' in got["TuneguardOperatorDown"]["expr"]
    objs = template("--set", "monitoring.force=true", "--set", "watch.clusterWide=false",
                    "--set", "watch.namespaces={ml}")
    (pm,) = by_kind(objs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


@needs_helm
def test_dashboard_configmap_for_the_grafana_sidecar():
    objs = template("--set", "grafana.dashboards.annotations.grafana_folder=ML")
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"] == "tuneguard-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert json.loads(cm["data"]["tuneguard.json"]) == dashboard.build_dashboard()
    objs = template("--set", "grafana.dashboards.label=my_dash", "--set", "grafana.dashboards.labelValue=yes")
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"] == "tuneguard-dashboard"]
    assert cm["metadata"]["labels"]["my_dash"] == "yes"
    assert not [o for o in template("--set", "grafana.dashboards.enabled=false") if o["kind"] == "ConfigMap"]


@needs_helm
def test_the_operator_network_policy_admits_its_metrics_and_health_ports_only():
    objs = template()
    (policy,) = by_kind(objs, "NetworkPolicy")
    (dep,) = by_kind(objs, "Deployment")
    pod = dep["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    named = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == ["metrics", "health"] and set(ports) <= named
    assert all("from" not in rule for rule in policy["spec"]["ingress"])  # default: anyone may scrape
    peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    scoped = template("--set-json", "networkPolicy.metricsFrom=" + json.dumps([peer]))
    (policy,) = by_kind(scoped, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == [peer] and "from" not in policy["spec"]["ingress"][1]
    assert not by_kind(template("--set", "networkPolicy.enabled=false"), "NetworkPolicy")
