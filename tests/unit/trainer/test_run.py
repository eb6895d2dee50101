"""The whole loop on a tiny model: every method trains, report and plots, bad input fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneguard import contract
from tuneguard_trainer.local import run_local

from ._jobs import small_facts, tiny_model_dir, write_job


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": tiny_model_dir(root), "data": small_facts(root, n_per_relation=3), "root": root}


def _run(tmp_path, assets, **spec):
    job = write_job(tmp_path, model=assets["model"], data=assets["data"], **spec)
    out = tmp_path / "out"
    rc = run_local(job, out, "cpu")
    return rc, out


REPORT_KEYS = {"schema_version", "job", "method", "model", "dataset", "triage", "splits", "base", "final", "best",
               "history", "train_loss", "throughput", "guardrail", "frozen_weights", "deepspeed", "timings",
               "outputs"}


@pytest.mark.parametrize("method", [
    {"type": "sft"},
    {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5, "cacheTopK": 32}},
    {"type": "self-distill", "selfDistill": {"teacherPrompt": "few-shot"}},
    {"type": "freeze", "freeze": {"preset": "attention-only"}},
], ids=["sft", "self-distill", "self-distill-few-shot-teacher", "freeze"])
def test_every_method_trains_and_reports(tmp_path, assets, method, capsys):
    rc, out = _run(tmp_path, assets, method=method,
                   training={"maxSteps": None, "epochs": 3, "learningRate": 3e-3})
    assert rc == 0
    rep = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(rep)
    assert rep["method"]["type"] == method["type"]
    assert set(rep["base"]) == set(contract.FIGURES) and set(rep["final"]["figures"]) == set(contract.FIGURES)
    losses = [p["loss"] for p in rep["train_loss"]]
    assert len(losses) == rep["throughput"]["steps"] > 3
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses  # training lowers the loss
    assert rep["final"]["figures"]["eval_loss"] < rep["base"]["eval_loss"]
    assert rep["history"] and rep["history"][-1]["step"] == rep["throughput"]["steps"]
    assert (out / "figures.png").stat().st_size > 0 and (out / "loss.png").stat().st_size > 0
    assert (out / "best-model" / "config.json").exists()
    assert (out / "checkpoints" / "latest").exists()
    if method["type"] == "freeze":
        fw = rep["frozen_weights"]
        assert fw["identical"] is True and fw["checked_tensors"] > 0 and fw["trainable_share"] < 1
    else:
        assert rep["frozen_weights"] is None
    if method.get("selfDistill", {}).get("teacherPrompt") == "few-shot":
        assert rep["method"]["teacher_view_batches"] == rep["throughput"]["steps"]  # every batch, no cache
    if method.get("selfDistill", {}).get("cacheTopK"):
        cache = rep["method"]["teacher_cache"]
        assert cache["misses"] > 0 and cache["hits"] > 0  # epochs 2 and 3 skip the teacher
    printed = capsys.readouterr().out
    assert "hallucination_rate" in printed or "fabrication_rate" in printed
    assert "base" in printed and "change" in printed
    assert printed.count("best model:") == 1, printed  # one delivered model, said once


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")} if d.exists() else {}


def test_bad_dataset_fails_before_training(tmp_path, assets, capsys):
    lines = Path(assets["data"]).read_text().splitlines()
    lines[2] = '{"question": "What?", "answers": []}'
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    job = write_job(tmp_path, model=assets["model"], data=bad)
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 2
    err = capsys.readouterr().err
    assert "line 3" in err and '"answers" must be a non-empty list' in err
    assert not out.exists()
    # an existing output directory stays untouched
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = _snapshot(out)
    assert run_local(job, out, "cpu") == 2
    assert _snapshot(out) == before


@pytest.mark.parametrize("spec,expect", [
    ({"training": {"learningRate": -1}}, "spec.training.learningRate"),
    ({"method": {"type": "freeze"}}, "freeze"),
    ({"method": {"type": "freeze", "freeze": {"trainablePatterns": ["no_such_block"]}}}, "'no_such_block' match no parameter"),
    ({"deepspeed": {"precision": "fp16"}}, "fp16 is not supported on CPU"),
], ids=["invalid-field", "cross-field-rule", "pattern-matches-nothing", "fp16-on-cpu"])
def test_bad_config_fails_before_training(tmp_path, assets, capsys, spec, expect):
    job = write_job(tmp_path, model=assets["model"], data=assets["data"], **spec)
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 2
    err = capsys.readouterr().err
    assert expect in err, err
    assert not out.exists()


def test_missing_model_dir_fails_before_training(tmp_path, assets, capsys):
    job = write_job(tmp_path, model=tmp_path / "nowhere", data=assets["data"])
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()
