"""spec.evaluation.sets: a team's own questions scored and reported on their own, checked for leakage like the
probes, and a bad set file stops the job before training naming the set and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneguard_trainer.local import run_local
from tuneguard_trainer.telemetry import Telemetry

from ._jobs import small_facts, tiny_model_dir, write_job


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": tiny_model_dir(root), "data": small_facts(root, n_per_relation=3), "root": root}


def _write(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


OURS = [{"question": "Which port does our billing service listen on?", "answers": ["8443"]},
        {"question": "Who owns the payments runbook?", "answers": ["Team Rho"], "relation": "owner"},
        {"question": "What is the on-call rotation length?", "answers": ["one week", "7 days"]}]


def test_sets_are_scored_for_base_reference_and_every_evaluation(tmp_path, assets, capsys):
    sets = [{"name": "ours", "file": _write(tmp_path / "ours.jsonl", OURS)},
            {"name": "smoke", "file": _write(tmp_path / "smoke.jsonl", OURS[:1])}]
    job = write_job(tmp_path, model=assets["model"], data=assets["data"],
                    evaluation={"intervalSteps": 3, "maxProbeSize": 8, "sets": sets})
    assert run_local(job, tmp_path / "out", "cpu") == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(rep["sets"]) == {"base", "reference", "final"}
    for which in ("base", "reference", "final"):
        assert rep["sets"][which]["ours"]["size"] == 3 and rep["sets"][which]["smoke"]["size"] == 1
        f = rep["sets"][which]["ours"]
        assert f["accuracy"] + f["abstention_rate"] + f["wrong_rate"] == pytest.approx(1.0)
    assert [sorted(h["sets"]) for h in rep["history"]] == [["ours", "smoke"]] * len(rep["history"]) == [["ours", "smoke"]] * 2
    assert rep["leakage"]["sets"]["ours"] == {"examples": 3, "leaked": 0, "dropped": 0}
    assert "evaluation set ours: accuracy" in capsys.readouterr().out


def test_a_set_that_repeats_a_training_question_is_refused_before_training(tmp_path, assets, capsys):
    train = json.loads(Path(assets["data"]).read_text().splitlines()[0])
    leaked = _write(tmp_path / "leaky.jsonl", [OURS[0], {"question": train["question"], "answers": train["answers"]}])
    job = write_job(tmp_path, model=assets["model"], data=assets["data"], leakage={"policy": "refuse"},
                    evaluation={"sets": [{"name": "leaky", "file": leaked}]})
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 2
    err = capsys.readouterr().err
    assert "leakage in evaluation.sets" in err and train["question"] in err and "leaky" in err
    assert not out.exists()


def test_a_broken_set_file_names_the_set_and_the_line(tmp_path, assets, capsys):
    bad = _write(tmp_path / "bad.jsonl", [OURS[0], '{"question": "no answers"}'])
    job = write_job(tmp_path, model=assets["model"], data=assets["data"],
                    evaluation={"sets": [{"name": "mine", "file": bad}]})
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 2
    err = capsys.readouterr().err
    assert "evaluation.sets[mine]: bad.jsonl line 2" in err and not out.exists()


def test_set_figures_go_to_the_metrics_and_the_status():
    t = Telemetry(job="j", namespace="ns", method="sft")
    t.sets({"ours": {"accuracy": 0.25, "abstention_rate": 0.5, "wrong_rate": 0.25, "size": 4}}, "tuned")
    t.sets({"ours": {"accuracy": 0.5}}, "base")
    from prometheus_client import generate_latest

    text = generate_latest(t.registry).decode()
    assert 'tuneguard_eval_set_accuracy{job="j",method="sft",model="tuned",namespace="ns",set="ours"} 0.25' in text
    assert 'model="base"' in text and t.status.wire()["sets"] == {"ours": 0.25}
