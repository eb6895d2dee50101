"""The dashboard, linted by the rules of Grafana's dashboard-linter (github.com/grafana/dashboard-linter:
panel-datasource, panel-title-description, panel-units, target-rate-interval, target-counter-agg,
template-datasource, target-job): the linter itself is a Go module the module proxy here refuses, so
its rules are written out, one test each, against the dashboard the chart ships."""

from __future__ import annotations

import re

import pytest

from tuneguard import dashboard

D = dashboard.build_dashboard()
PANELS = [(row, p) for row, panels in dashboard.rows(D) for p in panels]
TARGETS = [(row, p, t) for row, p in PANELS for t in p["targets"]]
RANGE_FUNCTIONS = re.compile(r"\b(rate|irate|increase)\(\s*[a-z_:][a-z0-9_:]*(\{[^}]*\})?\[([^\]]+)\]\)")
COUNTER_SERIES = re.compile(r"\b[a-z_:][a-z0-9_:]*_(total|bucket)\b")


@pytest.mark.parametrize("p", [p for _, p in PANELS], ids=[p["title"] for _, p in PANELS])
def test_every_panel_reads_the_datasource_variable_and_says_what_and_in_what_unit(p):
    assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, "panel-datasource-rule"
    assert p["title"].strip() and p["description"].strip(), "panel-title-description-rule"
    assert p["fieldConfig"]["defaults"].get("unit"), "panel-units-rule"
    assert p["targets"], "panel-no-targets-rule"
    assert p["options"] is not None


@pytest.mark.parametrize("t", [t for _, _, t in TARGETS], ids=[f"{p['title']}#{t['refId']}" for _, p, t in TARGETS])
def test_rates_use_the_rate_interval_and_counters_appear_only_inside_them(t):
    expr = t["expr"]
    for _, _, window in RANGE_FUNCTIONS.findall(expr):
        assert window == "$__rate_interval", f"target-rate-interval-rule: [{window}] in {expr}"
    # a raw counter only ever grows and resets on restart: shown only through rate/irate/increase
    assert not COUNTER_SERIES.search(RANGE_FUNCTIONS.sub("", expr)), f"target-counter-agg-rule: {expr}"


def test_every_per_job_query_selects_on_the_namespace_and_job_variables():
    """target-job-rule, for our job label (the FineTuneJob's name). The operator row's series come from the
    operator process and carry no job label: they are the one exception, by row."""
    for row, p, t in TARGETS:
        if row == dashboard.OPERATOR_ROW:
            assert "$job" not in t["expr"], "an operator series has no job label: this query would be empty"
            continue
        for var in ("namespace", "job"):
            assert f'{var}=~"${var}"' in t["expr"], f"{p['title']}: {t['expr']} does not select {var}=~\"${var}\""


def test_template_variables():
    """template-datasource-rule, and the job/namespace variables every query uses: multi-value, All = .*,
    read through the datasource variable, refreshed on time-range change."""
    variables = {v["name"]: v for v in D["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):
        v = variables[name]
        assert v["type"] == "query" and v["datasource"]["uid"] == "${datasource}"
        assert v["multi"] and v["includeAll"] and v["allValue"] == ".*" and v["refresh"] == 2
    assert 'namespace=~"$namespace"' in variables["job"]["query"]  # the job list follows the namespace choice


def test_panels_have_unique_ids_and_fit_the_grid():
    assert len({p["id"] for p in D["panels"]}) == len(D["panels"])
    for _, p in PANELS:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]


def test_the_rules_catch_what_they_are_for():
    """The lint's regexes, on expressions that break each rule."""
    assert RANGE_FUNCTIONS.findall('sum(increase(x_total{job=~"$job"}[1h]))')[0][2] == "1h"
    assert COUNTER_SERIES.search(RANGE_FUNCTIONS.sub("", 'sum by (job) (tuneguard_guardrail_breaches_total{job="a"})'))
    assert not COUNTER_SERIES.search(RANGE_FUNCTIONS.sub("", "sum(rate(x_bucket[$__rate_interval]))"))
