"""Run under torchrun by test_deepspeed: a few ZeRO steps on rank-specific data, then parameter digests."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch


def main(out: Path, zero_stage: int, lora: bool) -> None:
    from tuneguard import api
    from tuneguard_trainer import engine as eng
    from tuneguard_trainer.methods import Objective

    from tests.unit.trainer._tiny import tiny_llama, toy_batch

    info = eng.init_distributed("cpu")
    model = tiny_llama(seed=0)  # identical start on every rank
    if lora:
        from tuneguard_trainer import adapters

        torch.manual_seed(0)  # the adapters' A matrices are random: the same on every rank
        spec_a = api.AdapterSpec(rank=4)
        model = adapters.wrap(model, spec_a, adapters.target_modules(model, spec_a))
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    spec = api.FineTuneJobSpec.model_validate({
        "model": {"uri": "/unused"}, "datasets": {"train": "/unused.jsonl"}, "method": {"type": "sft"},
        "training": {"batchSize": 4, "gradientAccumulation": 2, "learningRate": 1e-2, "warmupSteps": 1},
        "deepspeed": {"zeroStage": zero_stage, "precision": "fp32"},
    })
    engine, cfg = eng.create_engine(model, spec, "cpu", info.world_size, total_steps=3)
    obj = Objective("sft")
    for micro in range(6):  # 3 optimizer steps, different data on each rank
        batch = toy_batch(seed=100 * info.rank + micro)
        out_ = obj(engine, batch)
        engine.backward(out_.loss)
        engine.step()
    digest = hashlib.sha256()
    moved, moved_frozen = 0, 0
    for n, p in engine.module.named_parameters():
        digest.update(p.detach().contiguous().view(torch.uint8).numpy().tobytes())
        changed = int(not torch.equal(p.detach(), init[n]))
        moved += changed
        moved_frozen += changed * (not p.requires_grad)
    (out / f"rank{info.rank}.json").write_text(json.dumps({
        "digest": digest.hexdigest(), "moved": moved, "moved_frozen": moved_frozen, "steps": engine.global_steps, "world": info.world_size,
        "zero": cfg["zero_optimization"]["stage"], "lr": eng.current_lr(engine)}))
    torch.distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "lora")
