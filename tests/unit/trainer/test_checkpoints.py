"""Checkpoints: atomic layout, and a run killed with SIGKILL resumes at its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tuneguard_trainer.checkpoints import CheckpointManager, atomic_write_text

from ._jobs import small_facts, tiny_model_dir, write_job

ROOT = Path(__file__).resolve().parents[3]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "trainer_image"), str(ROOT / "operator")])
    env["OMP_NUM_THREADS"] = "1"
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TUNEGUARD_DEBUG_KILL_AT_STEP"):
        env.pop(v, None)
    env.update(extra)
    return env


def _run(job: Path, out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneguard.cli", "run", str(job), "--out", str(out), "--device", "cpu"],
                          env=_env(**env), capture_output=True, text=True, timeout=900, cwd=ROOT)


def test_pointer_ignores_incomplete_checkpoints(tmp_path):
    m = CheckpointManager(tmp_path, rank=0, local_rank=0)
    assert m.latest() is None
    (m.dir / ".tmp-step-000004" / "state").mkdir(parents=True)  # a save killed half-way
    (m.dir / "step-000002").mkdir(parents=True)
    (m.dir / "step-000002" / "meta.json").write_text("{}")
    atomic_write_text(m.dir / "latest", "step-000002")
    assert m.latest() == m.dir / "step-000002"
    m.recover()
    assert not (m.dir / ".tmp-step-000004").exists()
    # a pointer to a directory without meta.json (never completed) is not trusted
    (m.dir / "step-000003").mkdir()
    atomic_write_text(m.dir / "latest", "step-000003")
    assert m.latest() is None


@pytest.mark.parametrize("method", [{"type": "sft"}, {"type": "sft", "adapter": {"rank": 4, "targets": "attention"}}],
                         ids=["full", "lora"])
def test_killed_run_resumes_at_its_checkpoint(tmp_path, method):
    """With an adapter the checkpoint holds only the adapter: the resumed run rebuilds the frozen base."""
    model = tiny_model_dir(tmp_path)
    data = small_facts(tmp_path, n_per_relation=3)
    job = write_job(tmp_path, model=model, data=data, method=method,
                    training={"maxSteps": 8, "checkpointInterval": 2, "learningRate": 3e-3},
                    evaluation={"intervalSteps": 4, "maxProbeSize": 4})
    # the reference: one uninterrupted run
    ref = _run(job, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    # SIGKILL right after step 5 (checkpoints at 2 and 4; no clean-up runs)
    out = tmp_path / "out"
    killed = _run(job, out, TUNEGUARD_DEBUG_KILL_AT_STEP="5")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-000004"
    assert not (out / "report.json").exists()
    resumed = _run(job, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    ref_rep = json.loads((tmp_path / "ref" / "report.json").read_text())
    assert rep["resumed_from"]["step"] == 4
    assert [p["step"] for p in rep["train_loss"]] == list(range(1, 9))
    # same data order, optimizer and scheduler state: the resumed run retraces the reference
    for a, b in zip(rep["train_loss"], ref_rep["train_loss"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-6)
    for f, v in ref_rep["final"]["figures"].items():
        if v is not None:
            assert rep["final"]["figures"][f] == pytest.approx(v, rel=1e-3, abs=1e-4), f
    assert [h["step"] for h in rep["history"]] == [4, 8]


def test_pointer_temp_names_differ_between_hosts_with_the_same_pid(tmp_path, monkeypatch):
    """Two worker pods on one shared output volume: both are PID 1, both write `latest`. Their temporary
    files must not collide (one rename would otherwise pull the other's file away: FileNotFoundError)."""
    import socket

    from tuneguard_trainer import checkpoints

    monkeypatch.setattr(checkpoints.os, "getpid", lambda: 1)
    names = []
    for host in ("job-worker-0", "job-worker-1"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        names.append(checkpoints._tmp_name(tmp_path / "latest").name)
        checkpoints.atomic_write_text(tmp_path / "latest", "step-000002")
    assert names[0] != names[1]
    assert (tmp_path / "latest").read_text() == "step-000002"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
