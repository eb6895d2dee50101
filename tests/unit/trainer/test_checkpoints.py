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
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TUNEGUARD_DEBUG_KILL_AT_STEP",
              "TUNEGUARD_DEBUG_KILL_IN_SAVE"):
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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A job with a checkpoint every 2 of its 8 steps, and the report of one uninterrupted run of it."""
    root = tmp_path_factory.mktemp("ckpt")
    job = write_job(root, model=tiny_model_dir(root), data=small_facts(root, n_per_relation=3),
                    training={"maxSteps": 8, "checkpointInterval": 2, "learningRate": 3e-3},
                    evaluation={"intervalSteps": 4, "maxProbeSize": 4})
    ref = _run(job, root / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    return job, json.loads((root / "ref" / "report.json").read_text())


def _resumed_like_the_reference(resumed, out, reference, from_step: int) -> dict:
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["resumed_from"]["step"] == from_step
    for a, b in zip(rep["train_loss"], reference["train_loss"]):  # the same run, steps from_step+1.. redone
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    assert not list((out / "checkpoints").glob(".tmp-*"))
    return rep


def test_a_damaged_newest_checkpoint_costs_only_its_steps(tmp_path, uninterrupted):
    """The newest checkpoint truncated after it was written (a disk fault, a bad copy): the run resumes from
    the one before it, which is kept for that, instead of failing or starting over."""
    job, reference = uninterrupted
    out = tmp_path / "out"
    assert _run(job, out, TUNEGUARD_DEBUG_KILL_AT_STEP="5").returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-000004" and (ckpts / "step-000002").is_dir()
    (victim,) = (ckpts / "step-000004" / "state").glob("*model_states.pt")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    resumed = _run(job, out)
    assert "step-000004 is damaged or missing" in resumed.stderr and "resuming from step-000002" in resumed.stderr
    _resumed_like_the_reference(resumed, out, reference, from_step=2)


def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_one(tmp_path, uninterrupted):
    """SIGKILL while step 4's checkpoint is being written (files there, not yet renamed into place)."""
    job, reference = uninterrupted
    out = tmp_path / "out"
    assert _run(job, out, TUNEGUARD_DEBUG_KILL_IN_SAVE="4").returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert (ckpts / ".tmp-step-000004").is_dir() and (ckpts / "latest").read_text().strip() == "step-000002"
    _resumed_like_the_reference(_run(job, out), out, reference, from_step=2)


@pytest.mark.skipif(os.geteuid() != 0 or not sys.platform.startswith("linux"), reason="mounts a tmpfs: root on Linux")
def test_a_full_output_volume_fails_clearly_and_keeps_what_was_complete(tmp_path, uninterrupted):
    """The output volume fills up mid-run (a real, small tmpfs): the run fails saying so and where it will resume,
    the checkpoint and best model written before are intact, and with space again the run finishes."""
    job, reference = uninterrupted
    out = tmp_path / "volume"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tuneguard-test", str(out)], check=True)
    try:
        assert _run(job, out, TUNEGUARD_DEBUG_KILL_AT_STEP="5").returncode == -signal.SIGKILL
        best_before = {p.name: p.read_bytes() for p in (out / "best-model").iterdir()}
        filler = out / "filler"
        with open(filler, "wb") as fh:  # every byte left, taken
            try:
                while True:
                    fh.write(b"\0" * (1 << 20))
                    fh.flush()
            except OSError:
                pass
        full = _run(job, out)
        assert full.returncode == 1, full.stderr[-3000:]
        assert "no space left for the output" in full.stderr and "resumes from its checkpoint step-000004" in full.stderr
        assert "Traceback" not in full.stderr
        assert (out / "checkpoints" / "latest").read_text().strip() == "step-000004"
        assert {p.name: p.read_bytes() for p in (out / "best-model").iterdir()} == best_before
        assert not (out / "report.json").exists()
        filler.unlink()
        _resumed_like_the_reference(_run(job, out), out, reference, from_step=4)
    finally:
        subprocess.run(["umount", str(out)], check=False)
