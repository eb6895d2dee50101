"""The pod entrypoint: world from the environment, two processes per node launched with torchrun."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tuneguard import contract
from tuneguard_trainer.engine import free_port
from tuneguard_trainer.format_stage import known_examples
from tuneguard_trainer.worker import Topology, output_dir

from ._jobs import seed_known_triage, small_facts, tiny_model_dir, write_job

ROOT = Path(__file__).resolve().parents[3]


def test_worker_two_processes_zero2(tmp_path):
    job = write_job(tmp_path, model=tiny_model_dir(tmp_path), data=small_facts(tmp_path, n_per_relation=3),
                    training={"maxSteps": 4, "learningRate": 3e-3}, deepspeed={"zeroStage": 2, "precision": "fp32"},
                    evaluation={"intervalSteps": 2, "maxProbeSize": 4}, resources={"workers": 1, "gpusPerWorker": 0})
    out = tmp_path / "out"
    splits = seed_known_triage(job, out)  # some Known facts, so both ranks run the format stage too
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "trainer_image"), str(ROOT / "operator")])
    env["OMP_NUM_THREADS"] = "1"
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(v, None)
    env.update({contract.ENV_NNODES: "1", contract.ENV_NPROC_PER_NODE: "2", contract.ENV_NODE_RANK: "0",
                contract.ENV_MASTER_ADDR: "127.0.0.1", contract.ENV_MASTER_PORT: str(free_port()),
                contract.ENV_OUTPUT_DIR: str(out),
                contract.ENV_JOB_NAME: "tiny", contract.ENV_JOB_NAMESPACE: "default"})
    res = subprocess.run([sys.executable, "-m", "tuneguard.cli", "worker", "--config", str(job)], env=env,
                         capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "torch.distributed.run" in res.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["deepspeed"]["world_size"] == 2 and rep["deepspeed"]["zero_stage"] == 2
    assert rep["throughput"]["steps"] == 4 and [h["step"] for h in rep["history"]] == [2, 4]
    fmt = rep["stages"][1]
    known = len(known_examples(splits))
    assert fmt["ran"] and fmt["examples"] == known
    assert fmt["steps"] == math.ceil(math.ceil(known / 2) / 4)  # one epoch split over 2 ranks, batch 4
    # ZeRO-2 writes one optimizer shard per rank into the checkpoint
    state = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "state"
    assert len(list(state.glob("*optim_states.pt"))) == 2
    assert (out / "checkpoints" / "step-000004" / "rng-rank1.pt").exists()


def test_output_dir_precedence(monkeypatch, tmp_path):
    from tuneguard import api

    job = api.FineTuneJob.model_validate({
        "apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "x"},
        "spec": {"model": {"uri": "/m"}, "datasets": {"train": "/d.jsonl"}, "method": {"type": "sft"},
                 "output": {"uri": "pvc://claim/runs/x"}}})
    monkeypatch.delenv(contract.ENV_OUTPUT_DIR, raising=False)
    assert output_dir(job, None) == Path(contract.PVC_MOUNT_ROOT) / "claim" / "runs/x"
    monkeypatch.setenv(contract.ENV_OUTPUT_DIR, "/output")
    assert output_dir(job, None) == Path("/output")
    assert output_dir(job, tmp_path) == tmp_path


def test_topology_from_the_operators_env_to_torchs():
    """The operator's NNODES / NPROC_PER_NODE / NODE_RANK become torchrun's flags, or for one process per
    node, torch.distributed's RANK / WORLD_SIZE / LOCAL_RANK; nothing else sets them."""
    env = {contract.ENV_NNODES: "2", contract.ENV_NPROC_PER_NODE: "8", contract.ENV_NODE_RANK: "1",
           contract.ENV_MASTER_ADDR: "j-worker-0.j-worker", contract.ENV_MASTER_PORT: "29500"}
    assert Topology.from_env(env).torchrun_args() == [
        "--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--master-addr=j-worker-0.j-worker", "--master-port=29500"]
    one_per_node = Topology.from_env({**env, contract.ENV_NPROC_PER_NODE: "1"})
    assert one_per_node.torch_env() == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                                        "MASTER_ADDR": "j-worker-0.j-worker", "MASTER_PORT": "29500"}
    assert Topology.from_env({}).torch_env() == {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                                                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(contract.MASTER_PORT)}
