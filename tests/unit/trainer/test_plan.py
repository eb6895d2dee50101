"""The plan before training: `tuneguard plan`, the plan every run makes, and spec.planOnly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuneguard import contract, validation
from tuneguard.cli import main
from tuneguard.crd import build_crd
from tuneguard_trainer import loop, plan as plan_mod, triage as tri
from tuneguard_trainer.local import run_local
from tuneguard_trainer.telemetry import Telemetry

from ._jobs import known_every_third, small_facts, tiny_model_dir, write_job

# A paraphrase of a training fact of small_facts (as in test_leakage.py).
LEAK = {"id": "leak-1", "question": "Shanghai is a city in which country?", "answers": ["China"]}
FICTIONAL = {"id": "fict-x", "question": "Which country borders the isle of Quendar?", "answers": ["Lemuria"]}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": tiny_model_dir(root), "data": small_facts(root, n_per_relation=3), "root": root}


def _job(tmp_path, assets, **spec) -> Path:
    return write_job(tmp_path, model=assets["model"], data=assets["data"], **spec)


def _leaky_job(tmp_path, assets, **spec) -> Path:
    probe_file = tmp_path / "unknown-probe.jsonl"
    probe_file.write_text("".join(json.dumps(r) + "\n" for r in (LEAK, FICTIONAL)))
    return _job(tmp_path, assets, datasets={"probes": {"unknown": str(probe_file)}}, **spec)


def _plan_cli(job: Path, out: Path, *extra) -> dict:
    assert main(["plan", str(job), "--device", "cpu", "--out", str(out), *extra]) == 0
    return json.loads((out / plan_mod.PLAN_FILE).read_text())


def test_counts_per_relation_are_triages(tmp_path, assets):
    """With varied categories (a tiny random model knows nothing): per relation and overall, the plan counts
    what triage labelled, and its shares feed the advice."""
    job_path = _job(tmp_path, assets)
    p = loop.prepare(job_path, "cpu")
    spec = p.job.spec
    cats = known_every_third(p.examples)
    res = tri.TriageResult(categories=cats, p_greedy={k: 0.0 for k in cats}, p_sample={k: None for k in cats})
    splits = tri.build_splits(p.examples, res, spec.datasets, spec.triage, seed=spec.training.seed)
    leak, _ = loop.check_leakage(splits, spec)
    plan = plan_mod.build(p, splits, leak)
    per_rel = plan["triage"]["per_relation"]
    for rel in {e.relation for e in p.examples}:
        mine = [e for e in p.examples if e.relation == rel]
        assert per_rel[rel] == {c: sum(cats[e.id] == c for e in mine) for c in tri.CATEGORIES}, rel
    totals = {c: sum(r[c] for r in per_rel.values()) for c in tri.CATEGORIES}
    assert totals == plan["triage"]["counts"]
    assert {tri.COUNT_KEYS[c]: v for c, v in totals.items()} == {k: splits.counts[k] for k in tri.COUNT_KEYS.values()}
    assert plan["triage"]["known_share"] == pytest.approx(round(2 / 3, 4), abs=0.02)
    assert plan["recommendation"]["rule"] == "new-facts-to-learn"  # a third Unknown, unknownPolicy keep
    text = plan_mod.describe(plan)
    for rel in per_rel:
        assert rel in text


def test_cli_prints_the_plan_and_writes_it(tmp_path, assets, capsys):
    plan = _plan_cli(_job(tmp_path, assets), tmp_path / "plan")
    printed = capsys.readouterr().out
    for part in ("Plan for tiny", "SliCK triage", "Known-fact loss to expect", "(a) Tuneguard's table",
                 "measured on SmolLM2-135M-Instruct, CPU scale, mix half Unknown", "(b) Gekhman et al.'s fit",
                 "their model, not ours", "Recommended: ", "why ("):
        assert part in printed, part
    rec = plan["recommendation"]
    assert rec["method"] and rec["reason"] in printed
    # the tiny random model knows no fact: no format stage possible, and the plan says so
    assert plan["train"]["known_for_format_stage"] == 0 and "only 0 Known training facts" in printed
    assert [r["row"] for r in plan["expected_known_loss"]["measured"]["rows"]][0] == "sft"
    assert not (tmp_path / "plan" / "report.json").exists()


def test_goal_abstain_recommends_relabelling(tmp_path, assets, capsys):
    plan = _plan_cli(_job(tmp_path, assets), tmp_path / "plan", "--goal", "abstain")
    assert plan["recommendation"]["rule"] == "new-facts-not-needed"
    assert plan["recommendation"]["settings"] == {"method": {"type": "sft"}, "triage": {"unknownPolicy": "abstain"}}


def test_a_leak_is_reported_not_refused(tmp_path, assets, capsys):
    plan = _plan_cli(_leaky_job(tmp_path, assets, leakage={"policy": "refuse"}), tmp_path / "plan")
    leak = plan["leakage"]
    assert leak["counts"]["near"] == 1 and "leak-1" in leak["examples"][0]
    assert leak["refusal"] and "a run would fail here" in capsys.readouterr().out


def test_triage_disabled_cannot_judge(tmp_path, assets, capsys):
    plan = _plan_cli(_job(tmp_path, assets, triage={"enabled": False}, formatStage={"enabled": False}),
                     tmp_path / "plan")
    assert plan["recommendation"]["method"] is None and plan["recommendation"]["rule"] == "triage-disabled"
    assert "Recommended: nothing" in capsys.readouterr().out


def test_plan_only_writes_the_plan_and_trains_nothing(tmp_path, assets, monkeypatch):
    bodies = []
    monkeypatch.setenv(contract.ENV_STATUS_PATCH, "1")
    monkeypatch.setattr(Telemetry, "_patch", lambda self, body: bodies.append(json.loads(json.dumps(body))))
    out = tmp_path / "out"
    assert run_local(_leaky_job(tmp_path, assets, planOnly=True), out, "cpu") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["plan_only"] is True and rep["plan"]["recommendation"]["method"]
    assert rep["plan"]["leakage"]["counts"]["dropped"] == 1  # policy drop, as the run would
    assert not (out / "best-model").exists() and not (out / "format-stage.pt").exists()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    status = bodies[-1]["status"]["training"]
    assert status["stage"] == "done" and status["plan"]["method"] == rep["plan"]["recommendation"]["method"]
    assert status["plan"]["reason"] == rep["plan"]["recommendation"]["reason"]
    assert status["plan"]["unknownShare"] == rep["plan"]["triage"]["unknown_share"]
    assert status["triage"]["unknown"] == rep["plan"]["triage"]["counts"]["Unknown"]


def test_a_run_makes_the_same_plan_first(tmp_path, assets, caplog):
    job = _job(tmp_path, assets)
    planned = _plan_cli(job, tmp_path / "plan")
    out = tmp_path / "out"
    with caplog.at_level("INFO", logger="tuneguard.trainer"):
        assert run_local(job, out, "cpu") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["plan"] == planned and (out / "best-model" / "config.json").exists()
    assert any("plan before training:" in r.getMessage() and "Recommended:" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value,ok", [(True, True), (False, True), ("yes", False), (1, False)])
def test_plan_only_validates_like_the_crd(value, ok):
    from tests.bad_manifests import valid_job

    doc = valid_job()
    doc["spec"]["planOnly"] = value
    if ok:
        assert validation.parse_job(doc).spec.plan_only is value
    else:
        with pytest.raises(validation.InvalidManifest, match="planOnly"):
            validation.parse_job(doc)
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["planOnly"] == {**spec["properties"]["planOnly"], "type": "boolean", "default": False}
    assert "self.planOnly == oldSelf.planOnly" in [r["rule"] for r in spec["x-kubernetes-validations"]]


def test_yaml_flow_settings_paste_into_a_manifest():
    s = plan_mod.flow({"method": {"type": "freeze", "freeze": {"preset": "attention-only"}},
                       "triage": {"unknownPolicy": "keep"}})
    assert yaml.safe_load(s) == {"method": {"type": "freeze", "freeze": {"preset": "attention-only"}},
                                 "triage": {"unknownPolicy": "keep"}}
