"""The advice table: each rule fires on its case, and the evidence it cites is the results file's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tuneguard import advice, evidence
from tuneguard.advice import DataFacts

ROOT = Path(__file__).resolve().parents[2]


def _facts(hk=0, mk=0, wk=0, unk=0, known_train=40, **kw) -> DataFacts:
    return DataFacts(slick=kw.pop("slick", True), examples=hk + mk + wk + unk, highly_known=hk, maybe_known=mk,
                     weakly_known=wk, unknown=unk, known_train=known_train, **kw)


@pytest.mark.parametrize("facts,rule,method,policy", [
    (_facts(hk=50, mk=40, unk=10), "mostly-known", "freeze", "keep"),
    (_facts(hk=20, mk=20, wk=10, unk=50), "new-facts-to-learn", "freeze", "keep"),
    (_facts(hk=20, mk=20, wk=10, unk=50, learn_new_facts=False), "new-facts-not-needed", "sft", "abstain"),
    (_facts(hk=20, mk=20, wk=10, unk=50, slick=False), "triage-disabled", None, None),
], ids=["mostly-known", "learn", "abstain", "triage-disabled"])
def test_each_rule_fires_on_its_case(facts, rule, method, policy):
    adv = advice.advise(facts)
    assert (adv.rule, adv.method) == (rule, method)
    assert adv.reason
    if method is None:
        assert adv.settings() is None and "cannot judge" in adv.reason
    else:
        assert adv.settings()["triage"]["unknownPolicy"] == policy


def test_mostly_known_is_measured_on_the_known_share():
    edge = advice.MOSTLY_KNOWN_SHARE
    assert advice.advise(_facts(hk=int(100 * edge), unk=100 - int(100 * edge))).rule == "mostly-known"
    assert advice.advise(_facts(hk=int(100 * edge) - 1, unk=101 - int(100 * edge))).rule == "new-facts-to-learn"


@pytest.mark.parametrize("known_train,format_stage,noted", [
    (advice.MIN_FORMAT_STAGE_KNOWN - 1, True, True),
    (advice.MIN_FORMAT_STAGE_KNOWN, True, False),
    (0, False, False),  # no format stage: nothing to warn about
])
def test_too_few_known_for_the_format_stage_is_a_note(known_train, format_stage, noted):
    adv = advice.advise(_facts(hk=20, unk=80, known_train=known_train, format_stage=format_stage))
    assert adv.rule == "new-facts-to-learn"  # a caveat does not decide
    assert bool(adv.notes) is noted
    if noted:
        assert f"only {known_train} Known training facts" in adv.notes[0]


def _table(*rows):
    return dataclasses.replace(evidence.SMOLLM2, rows=tuple(rows))


SMOL = evidence.SMOLLM2


def test_the_evidence_decides_the_learning_method():
    """The rule names no method: with other figures it picks another row."""
    assert advice.advise(_facts(hk=10, unk=90), _table(SMOL.row("sft"), SMOL.row("freeze"))).method == "freeze"
    worse_freeze = dataclasses.replace(SMOL.row("freeze"), known_drop=30.0)
    adv = advice.advise(_facts(hk=10, unk=90), _table(SMOL.row("sft"), worse_freeze))
    assert adv.method == "sft" and "92 %" in adv.reason


def test_reasons_cite_the_measured_figures():
    f = SMOL.row("freeze")
    adv = advice.advise(_facts(hk=20, unk=80))
    assert f"{f.known_drop:.1f} points [{f.known_drop_ci95[0]:.1f}, {f.known_drop_ci95[1]:.1f}]" in adv.reason
    a = SMOL.row("sft-abstain")
    adv = advice.advise(_facts(hk=20, unk=80, learn_new_facts=False))
    assert f"to {a.fabrication_rate:.0f} %" in adv.reason and f"from {SMOL.row('sft').fabrication_rate:.0f} %" in adv.reason


def test_each_model_gets_its_own_table():
    g = evidence.GEMMA3
    assert evidence.table_for("bundled://gemma3-270m") is g
    assert evidence.table_for("hf://someone/other-model") is evidence.DEFAULT
    adv = advice.advise(_facts(hk=20, unk=80), g)
    b = adv.row
    assert adv.table is g and b in g.rows and f"{b.known_drop:.1f} points" in adv.reason and not adv.notes


def test_a_row_the_models_table_lacks_is_cited_from_the_default_table_with_a_note():
    g = evidence.GEMMA3
    assert not g.has_policy("abstain")  # the four main rows only
    adv = advice.advise(_facts(hk=20, unk=80, learn_new_facts=False), g)
    assert adv.table is evidence.DEFAULT and adv.row is evidence.DEFAULT.row("sft-abstain")
    assert adv.notes == [f"{g.model}'s table has no unknownPolicy abstain row: the figures cited are "
                         f"{evidence.DEFAULT.model}'s"]


@pytest.mark.parametrize("table", evidence.TABLES, ids=lambda t: t.model)
def test_evidence_matches_the_results_file(table):
    results = json.loads((ROOT / table.source).read_text())
    agg = results["aggregate"]["table"]
    assert results["settings"]["steps"] == table.steps
    assert results["settings"]["model"] == table.model
    assert results["settings"]["unknown_share"] == 0.5
    assert results["command"].startswith(table.command)  # the table the rows were copied from

    def pts(x):
        return round(100 * x, 1)

    for r in table.rows:
        t = agg[r.row]
        assert r.seeds == len(t["known_drop"]["values"]), r.row
        assert r.known_drop == pts(t["known_drop"]["mean"]), r.row
        assert r.known_drop_ci95 == tuple(pts(x) for x in t["known_drop"]["ci95"]), r.row
        assert r.new_fact_accuracy == pts(t["new_fact_accuracy"]["mean"]), r.row
        assert r.new_fact_accuracy_ci95 == tuple(pts(x) for x in t["new_fact_accuracy"]["ci95"]), r.row
        assert r.fabrication_rate == pts(t["fabrication_rate"]["mean"]), r.row
        assert r.abstention_rate == pts(t["abstention_rate"]["mean"]), r.row


@pytest.mark.parametrize("table", evidence.TABLES, ids=lambda t: t.model)
def test_evidence_rows_ran_the_settings_they_recommend(table):
    from bench.hallucination_table import METHODS

    for r in table.rows:
        method, policy, guardrails = METHODS[r.row]
        assert (r.method, r.unknown_policy, guardrails) == (method, policy, None), r.row


def test_gekhman_fit():
    assert evidence.gekhman_accuracy(1.0, 0.0) == pytest.approx(44.2)
    assert evidence.gekhman_accuracy(0.5, 0.5) == pytest.approx(36.4)
