"""The format stage on a tiny model: what it trains, what the fact stage starts from, the teacher, the
status and metrics, and that a job with the stage off runs as before.

A tiny random model knows no fact, so triage would label everything Unknown and the stage would have nothing
to train. These tests hand the loop a triage result instead, through its own resume cache (triage.pt with
the loop's digest, as a resumed run or the benchmark does): chosen facts are HighlyKnown or MaybeKnown."""

from __future__ import annotations

import json

import pytest
import torch

from tuneguard import api, validation
from tuneguard_trainer import data as data_mod, format_stage as fs, triage as tri
from tuneguard_trainer.local import run_local

from ._jobs import known_every_third, seed_known_triage, small_facts, tiny_model_dir, write_job


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": tiny_model_dir(root), "data": small_facts(root, n_per_relation=3)}


def _run(tmp_path, assets, name="fs", **spec):
    job = write_job(tmp_path, name=name, model=assets["model"], data=assets["data"], **spec)
    out = tmp_path / f"out-{name}"
    splits = seed_known_triage(job, out)
    rc = run_local(job, out, "cpu")
    assert rc == 0
    return json.loads((out / "report.json").read_text()), out, splits


def test_known_examples_are_the_highly_and_maybe_known_training_facts(assets):
    train = data_mod.load_examples(str(assets["data"]))
    cats = known_every_third(train)
    splits = tri.Splits(train=list(train), known_probe=[], new_facts=[], unknown_probe=[], drift_prompts=[],
                        categories=cats)
    got = fs.known_examples(splits)
    assert got and all(cats[e.id] in (tri.HIGHLY_KNOWN, tri.MAYBE_KNOWN) for e in got)
    assert len(got) == sum(c != tri.UNKNOWN for c in cats.values())


def test_planned_steps_follow_epochs_or_max_steps():
    spec = api.FineTuneJobSpec.model_validate({
        "model": {"uri": "/m"}, "datasets": {"train": "/d"}, "method": {"type": "sft"},
        "training": {"batchSize": 4}})
    assert fs.planned_steps(10, spec, world=1) == 3  # one epoch, ceil(10 / 4)
    assert fs.planned_steps(10, spec, world=2) == 2  # each rank sees 5 facts
    two = spec.model_copy(update={"format_stage": api.FormatStageSpec(max_steps=7)})
    assert fs.planned_steps(10, two, world=1) == 7


def test_the_stage_trains_only_known_facts_and_the_fact_stage_starts_from_its_snapshot(tmp_path, assets, monkeypatch):
    from tuneguard_trainer import prompts

    seen = []  # the examples of every encode_for_training call, in order: the format stage's comes first
    real = prompts.encode_for_training

    def spy(tok, examples, *a, **k):
        seen.append([e.id for e in examples])
        return real(tok, examples, *a, **k)

    monkeypatch.setattr(prompts, "encode_for_training", spy)
    # the fact stage's learning rate is tiny: its model stays where it started
    rep, out, splits = _run(tmp_path, assets, training={"maxSteps": 2, "learningRate": 1e-9},
                            formatStage={"learningRate": 5e-3, "epochs": 2})
    known = {e.id for e in fs.known_examples(splits)}
    assert seen[0] and set(seen[0]) == known  # the format stage's examples (the first encoded set)
    stage = rep["stages"][1]
    assert stage["name"] == "format" and stage["ran"] and stage["examples"] == len(known)
    assert stage["steps"] == fs.planned_steps(len(known), validation.load_job(tmp_path / "fs.yaml").spec, 1)
    assert stage["learning_rate"] == 5e-3 and len(stage["train_loss"]) == stage["steps"]
    assert rep["reference"]["model"] == "format-stage"
    # drift is measured from the snapshot: ~0 after a fact stage that barely moves; the base is far from it
    assert rep["final"]["figures"]["param_drift_l2"] < 1e-6
    assert rep["base"]["param_drift_l2"] > 1e-3
    assert (out / fs.SNAPSHOT_FILE).exists()
    assert [s["name"] for s in rep["stages"]] == ["triage", "format", "train"]
    assert set(rep["forgetting"]) == {"absolute_drop", "relative_drop_from_peak", "peak", "peak_step"}


def test_the_teacher_is_the_snapshot_and_never_changes(tmp_path, assets, monkeypatch):
    from tuneguard_trainer import methods

    teachers = []
    real = methods.Objective.from_spec.__func__

    def capture(cls, method_spec, teacher=None, **kw):
        teachers.append(teacher)
        return real(cls, method_spec, teacher=teacher, **kw)

    monkeypatch.setattr(methods.Objective, "from_spec", classmethod(capture))
    rep, out, _ = _run(tmp_path, assets, name="sd", method={"type": "self-distill"},
                       training={"maxSteps": 3, "learningRate": 3e-3})
    snap = torch.load(out / fs.SNAPSHOT_FILE, weights_only=False)["state"]
    teacher = teachers[-1].state_dict()
    assert set(teacher) == set(snap)
    assert all(torch.equal(teacher[k].cpu(), snap[k]) for k in snap)  # after 3 steps of the student
    assert rep["method"]["selfDistill"]["teacher"] == "format-stage"


def test_the_stage_shows_in_status_and_metrics_and_a_rerun_reuses_its_snapshot(tmp_path, assets, monkeypatch):
    from tuneguard_trainer import telemetry

    stages = []
    real = telemetry.Telemetry.stage

    def record(self, stage):
        stages.append(stage)
        real(self, stage)
        if self.enabled:
            assert self.status.stage == stage
            values = {s: self.g_stage.labels(**self.labels, stage=s)._value.get() for s in api.TRAINER_STAGES}
            assert values == {s: float(s == stage) for s in api.TRAINER_STAGES}

    monkeypatch.setattr(telemetry.Telemetry, "stage", record)
    _, out, _ = _run(tmp_path, assets, name="st")
    assert "format" in stages and stages.index("format") < stages.index("training")
    (out / "report.json").unlink()
    for sub in ("checkpoints", "best-model"):
        import shutil

        shutil.rmtree(out / sub, ignore_errors=True)
    job = tmp_path / "st.yaml"
    assert run_local(job, out, "cpu") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["stages"][1]["reused"] is True


def test_with_the_stage_off_the_reference_is_the_base_model(tmp_path, assets, monkeypatch):
    from tuneguard_trainer import telemetry

    stages = []
    real = telemetry.Telemetry.stage
    monkeypatch.setattr(telemetry.Telemetry, "stage", lambda self, s: (stages.append(s), real(self, s)))
    rep, out, _ = _run(tmp_path, assets, name="off", formatStage={"enabled": False},
                       method={"type": "self-distill", "selfDistill": {"teacher": "base"}})
    assert rep["reference"] == {"model": "base", "figures": rep["base"]}
    assert rep["stages"][1]["ran"] is False and "format" not in stages
    assert not (out / fs.SNAPSHOT_FILE).exists()
    assert rep["base"]["param_drift_l2"] == 0.0


def test_the_api_refuses_a_format_stage_it_cannot_run():
    base = {"model": {"uri": "/m"}, "datasets": {"train": "/d"}}
    with pytest.raises(ValueError, match="formatStage trains the facts triage labels Known"):
        api.FineTuneJobSpec.model_validate({**base, "method": {"type": "sft"}, "triage": {"enabled": False}})
    with pytest.raises(ValueError, match="selfDistill.teacher format-stage"):
        api.FineTuneJobSpec.model_validate({**base, "method": {"type": "self-distill"},
                                            "formatStage": {"enabled": False}})
    ok = api.FineTuneJobSpec.model_validate({**base, "method": {"type": "self-distill", "selfDistill": {"teacher": "base"}},
                                             "formatStage": {"enabled": False}, "triage": {"enabled": False}})
    assert ok.format_stage.enabled is False
