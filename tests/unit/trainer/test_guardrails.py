"""Guardrails: budgets, live re-reading, and the stop / rollback actions in the loop."""

from __future__ import annotations

import json

import yaml

from tuneguard import api
from tuneguard_trainer.guardrails import GuardrailSource, check
from tuneguard_trainer.local import run_local

from ._jobs import drift_prompts_file, small_facts, tiny_model_dir, write_job


def test_check_budgets():
    spec = api.GuardrailSpec(max_hallucination_increase=0.05, max_drift_kl=0.1, action="stop")
    base = {"hallucination_rate": 0.0}
    assert check({"hallucination_rate": 0.05, "drift_kl": 0.1}, base, spec) == []
    b = check({"hallucination_rate": 0.2, "drift_kl": 0.3}, base, spec)
    assert [x.guardrail for x in b] == ["hallucination", "drift"]
    assert check({"hallucination_rate": None, "drift_kl": None}, base, spec) == []


def test_budgets_are_reread_from_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    doc = {"spec": {"guardrails": {"maxDriftKL": 0.5, "action": "warn"}}}
    path.write_text(yaml.safe_dump(doc))
    src = GuardrailSource(api.GuardrailSpec(), path)
    assert src.current().max_drift_kl == 0.5
    doc["spec"]["guardrails"] = {"maxDriftKL": 0.1, "action": "rollback"}
    path.write_text(yaml.safe_dump(doc))
    assert src.current().action == "rollback" and src.current().max_drift_kl == 0.1
    path.write_text("spec: {guardrails: {maxDriftKL: -3}}")  # invalid: the last good budgets stay
    assert src.current().max_drift_kl == 0.1


def test_rollback_restores_the_base_when_nothing_is_within_budget(tmp_path, capsys):
    job = write_job(tmp_path, model=tiny_model_dir(tmp_path), data=small_facts(tmp_path, n_per_relation=3),
                    training={"maxSteps": 6, "learningRate": 3e-3},
                    evaluation={"intervalSteps": 2, "maxProbeSize": 4, "driftPrompts": str(drift_prompts_file(tmp_path))},
                    guardrails={"maxDriftKL": 1e-9, "action": "rollback"})
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["throughput"]["steps"] == 2  # stopped at the first evaluation
    assert rep["guardrail"]["breaches"][0]["action"] == "rollback"
    assert "rollback" in rep["stopped_early"]
    assert rep["final"]["step"] == 0 and rep["final"]["rolled_back_from"] == 2
    assert rep["final"]["figures"] == rep["base"]
    assert rep["best"] is None and (out / "best-model" / "config.json").exists()
