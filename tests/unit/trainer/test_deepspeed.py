"""DeepSpeed on CPU: config generation, and two processes under ZeRO-2 staying in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuneguard import api
from tuneguard_trainer import engine as eng

ROOT = Path(__file__).resolve().parents[3]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "trainer_image"), str(ROOT / "operator"),
                                         env.get("PYTHONPATH", "")])
    env["DS_ACCELERATOR"] = "cpu"
    env["OMP_NUM_THREADS"] = "1"
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(v, None)
    return env


def _spec(**ds):
    return api.FineTuneJobSpec.model_validate({
        "model": {"uri": "/m"}, "datasets": {"train": "/d.jsonl"}, "method": {"type": "sft"},
        "training": {"batchSize": 4, "gradientAccumulation": 3, "learningRate": 2e-5},
        "deepspeed": ds,
    })


def test_config_from_spec():
    cfg = eng.build_config(_spec(zeroStage=2, offloadOptimizer=True, config={"zero_optimization": {"overlap_comm": True}}),
                           "cpu", world_size=2)
    assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 24 and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu", "pin_memory": False},
                                        "overlap_comm": True}
    assert "bf16" not in cfg and "fp16" not in cfg and "optimizer" not in cfg  # fp32, torch AdamW on CPU


def test_precision_rules():
    assert eng.resolve_precision("auto", "cpu") == "fp32"
    assert eng.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(eng.EngineConfigError, match="fp16 is not supported on CPU"):
        eng.resolve_precision("fp16", "cpu")
    cfg = eng.build_config(_spec(precision="fp16"), "cuda", 1)
    assert cfg["fp16"]["enabled"] and cfg["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    assert cfg["optimizer"]["type"] == "AdamW"  # FusedAdam on GPU


def test_schedule_warmup_then_cosine():
    f = eng.lr_lambda(warmup=2, total=10)
    assert f(0) == 0.5 and f(1) == 1.0 and f(2) == 1.0
    assert 0 < f(6) < 1 and f(10) == pytest.approx(0.0, abs=1e-9)
    assert all(f(i) >= f(i + 1) for i in range(2, 10))


@pytest.mark.parametrize("weights", ["full", "lora"])
def test_two_processes_zero2_stay_in_sync(tmp_path, weights):
    """ZeRO-2 over two ranks; with a LoRA adapter only the adapter moves, identically on both ranks."""
    port = eng.free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           f"--master-port={port}", str(Path(__file__).with_name("ds_sync_worker.py")), str(tmp_path), "2", weights]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2 and r0["zero"] == 2
    assert r0["steps"] == r1["steps"] == 3
    assert r0["moved"] > 0  # training changed the parameters
    assert r0["digest"] == r1["digest"]  # ... identically on both ranks
    assert r0["moved_frozen"] == 0  # frozen parameters (a LoRA model's base) never move
