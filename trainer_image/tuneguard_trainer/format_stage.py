"""The format stage (Kaplan, Gekhman et al.): SFT on the Known training facts before the method's own stage.

A base or chat model asked a closed-book question does not answer in the targets' short format. The format
stage trains it on the training facts triage labels HighlyKnown or MaybeKnown (facts it already knows, so
it learns the format and no new knowledge), ``formatStage.epochs`` passes (paper: 1) or ``maxSteps``. Its
snapshot is then three things at once: the fact stage's starting point, the self-distill teacher
(``selfDistill.teacher: format-stage``) and the *reference* every figure is measured against, so that a
drop in known-fact accuracy counts knowledge lost, not a format learned.

What it trains is the same for every method, so rows of a comparison start from the same snapshot:
all parameters (freeze applies to the fact stage only: it asks which parameters learn the *new* facts),
on the Known facts' own answers (``unknownPolicy`` only changes Unknown targets, which this stage never
sees). It needs SliCK labels, so the API refuses it with triage disabled.

The snapshot is saved atomically (``format-stage.pt``, keyed by :func:`digest`), so a resumed run, or a
benchmark that shares it between runs, does not train it again; a stage killed half-way starts over.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from tuneguard import api

from .triage import KNOWN

log = logging.getLogger("tuneguard.trainer")

SNAPSHOT_FILE = "format-stage.pt"


@dataclass
class FormatStageResult:
    """What the report and status say about the stage (``ran`` False: the reference is the base model)."""

    ran: bool
    examples: int = 0
    steps: int = 0
    epochs: float = 0.0
    learning_rate: Optional[float] = None
    train_loss: list = field(default_factory=list)  # [{step, loss}]
    seconds: float = 0.0
    reused: bool = False
    note: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def known_examples(splits) -> list:
    """The training examples triage labels Known (never a probe: probes are not in ``splits.train``)."""
    return [e for e in splits.train if splits.categories.get(e.id) in KNOWN]


def learning_rate(spec: api.FineTuneJobSpec) -> float:
    return spec.format_stage.learning_rate or spec.training.learning_rate


def planned_steps(n_examples: int, spec: api.FineTuneJobSpec, world: int) -> int:
    fs, tr = spec.format_stage, spec.training
    if fs.max_steps:
        return int(fs.max_steps)
    micro_per_epoch = math.ceil(math.ceil(n_examples / world) / tr.batch_size)
    return max(1, math.ceil(fs.epochs * micro_per_epoch / tr.gradient_accumulation))


def digest(spec: api.FineTuneJobSpec, known_ids: list[str], world: int) -> str:
    """What the snapshot depends on: model, the Known facts (ids and answers come from the data files),
    the stage's settings and the optimisation settings it borrows."""
    tr = spec.training
    key = {"model": spec.model.wire(), "datasets": spec.datasets.wire(), "known": sorted(known_ids),
           "format": spec.format_stage.wire(), "seed": tr.seed, "batch": tr.batch_size,
           "accumulation": tr.gradient_accumulation, "seq": tr.max_seq_length, "lr": learning_rate(spec),
           "weight_decay": tr.weight_decay, "deepspeed": spec.deepspeed.wire(), "world": world}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _stage_spec(spec: api.FineTuneJobSpec) -> api.FineTuneJobSpec:
    """The job spec the stage's engine is built from: the stage's learning rate, no warm-up."""
    training = spec.training.model_copy(update={"learning_rate": learning_rate(spec), "warmup_steps": 0})
    return spec.model_copy(update={"training": training})


def load_snapshot(out: Path, want: str) -> Optional[dict]:
    import torch

    path = Path(out) / SNAPSHOT_FILE
    if not path.exists():
        return None
    try:
        snap = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a torn file cannot exist (atomic save); a foreign one is simply not reused
        log.warning("ignoring unreadable %s (%s)", path, e)
        return None
    return snap if snap.get("digest") == want else None


def full_state_dict(engine) -> dict:
    """The trained weights on the CPU, gathered from the ranks under ZeRO-3."""
    import torch

    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train(model, tokenizer, splits, spec: api.FineTuneJobSpec, device: str, world: int, rank: int,
          *, progress: bool = True, on_step=None) -> tuple[dict, FormatStageResult]:
    """SFT of ``model`` on the Known training facts; returns (full state dict, result). ``model`` is
    consumed (a DeepSpeed engine wraps it, and under ZeRO-3 shards it): start the next stage from a fresh
    copy loaded with the returned weights. ``on_step(step, total, loss)`` reports progress."""
    import sys

    import torch
    from torch.utils.data import DistributedSampler
    from tqdm.auto import tqdm

    from . import engine as eng
    from .methods import Objective, collate
    from .prompts import encode_for_training

    t0 = time.perf_counter()
    known = known_examples(splits)
    tr = spec.training
    total = planned_steps(len(known), spec, world)
    result = FormatStageResult(ran=True, examples=len(known), learning_rate=learning_rate(spec))
    encoded = encode_for_training(tokenizer, known, tr.max_seq_length)
    sampler = DistributedSampler(range(len(encoded)), num_replicas=world, rank=rank, shuffle=True,
                                 seed=tr.seed, drop_last=False)
    for prm in model.parameters():
        prm.requires_grad_(True)
    model.train()
    engine, _ = eng.create_engine(model, _stage_spec(spec), device, world, total)
    objective = Objective("sft")
    bar = tqdm(total=total, disable=not progress, unit="step", dynamic_ncols=True, desc="format stage",
               file=sys.stderr)
    step = micro = epoch = 0
    window = []
    while step < total:
        sampler.set_epoch(epoch)
        order = list(iter(sampler))
        for i in range(0, len(order), tr.batch_size):
            b = order[i:i + tr.batch_size]
            batch = collate([encoded[j] for j in b], tokenizer.pad_token_id)
            batch["index"] = torch.tensor(b, dtype=torch.long)
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            res = objective(engine, batch)
            engine.backward(res.loss)
            engine.step()
            micro += 1
            window.append(float(res.loss.detach()))
            if micro % tr.gradient_accumulation:
                continue
            step += 1
            loss = sum(window) / len(window)
            window = []
            result.train_loss.append({"step": step, "loss": round(loss, 6)})
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(step, total, loss)
            if step >= total:
                break
        epoch += 1
    bar.close()
    state = full_state_dict(engine)
    result.steps = step
    result.epochs = round(micro * tr.batch_size * world / max(len(known), 1), 4)
    result.seconds = round(time.perf_counter() - t0, 2)
    if hasattr(engine, "destroy"):
        engine.destroy()
    del engine
    return state, result
