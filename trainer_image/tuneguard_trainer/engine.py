"""DeepSpeed: the process group, the engine config generated from the spec, the optimizer and schedule.

- Distributed init: under torchrun/the worker launcher (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT in the environment) the world comes from there; otherwise a world of one on a free
  local port. gloo on CPU (``DS_ACCELERATOR=cpu``), nccl on CUDA.
- Precision: ``auto`` is bf16 on GPUs that support it, else fp32 (CPUs are ~30x slower in bf16); fp16
  uses dynamic loss scaling. fp16 on CPU is refused before training.
- Optimizer: on CPU torch's AdamW is handed to ``deepspeed.initialize`` (no JIT-built ops); on GPU the
  config's ``AdamW`` optimizer, which DeepSpeed runs as FusedAdam (or DeepSpeedCPUAdam when the
  optimizer is offloaded). Only trainable parameters reach the optimizer; the self-distill teacher is
  a separate module that DeepSpeed never sees.
- Schedule: linear warm-up over ``warmupSteps`` then cosine decay to 0 at the last step.
- ``deepspeed.config`` (raw) is merged over the generated config, recursively.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

log = logging.getLogger("tuneguard.trainer")

# Waiting ranks sit in a collective while rank 0 triages a large dataset: allow for it.
PROCESS_GROUP_TIMEOUT = timedelta(hours=3)


class EngineConfigError(ValueError):
    """A DeepSpeed setting this machine cannot honour (reported before training)."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        """This process's place in the world, from torch.distributed's launch variables (set by torchrun or
        the worker's Topology); a process without them is a world of one."""
        env = os.environ
        return cls(int(env.get("RANK", "0")), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0")))


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EngineConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return device


def prepare_accelerator(device: str) -> None:
    """Must run before deepspeed is imported: DeepSpeed picks its accelerator at import time."""
    if device == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cuda")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: str) -> DistInfo:
    """Join (or create) the process group. Idempotent."""
    prepare_accelerator(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
    os.environ.setdefault("LOCAL_RANK", "0")
    info = DistInfo.from_env()
    import deepspeed
    import torch.distributed as dist

    _quiet_deepspeed()
    if device == "cpu" and os.environ.get("TUNEGUARD_DS_SHM_COMM", "0") != "1":
        _skip_shm_comm_build()
    if not dist.is_initialized():
        # DeepSpeed keeps its comm backend in a module global; one left from a world destroyed earlier
        # in this process (an in-process run before this one) would hand out unregistered groups.
        import deepspeed.comm.comm as ds_comm

        ds_comm.cdb = None
        if device == "cuda":
            torch.cuda.set_device(info.local_rank)
        deepspeed.init_distributed(dist_backend="gloo" if device == "cpu" else "nccl",
                                   auto_mpi_discovery=False, verbose=False, timeout=PROCESS_GROUP_TIMEOUT)
    return info


def _skip_shm_comm_build() -> None:
    """On the CPU accelerator DeepSpeed JIT-compiles a shared-memory all-reduce op (1-2 minutes of C++ on a
    fresh machine) whenever its comm backend starts, even for a world of one. gloo does the same job
    for our sizes, so skip it unless TUNEGUARD_DS_SHM_COMM=1."""
    try:
        import importlib

        # importlib, not `import deepspeed.comm.torch as m`: the package's `torch` attribute is the torch
        # library itself, which that statement would return.
        ds_torch_comm = importlib.import_module("deepspeed.comm.torch")
        ds_torch_comm.build_shm_op = lambda: None
    except Exception:  # pragma: no cover - layout of another DeepSpeed version
        pass


def _quiet_deepspeed() -> None:
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except Exception:  # pragma: no cover
        pass


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        if device == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if device == "cpu" and precision == "fp16":
        raise EngineConfigError("spec.deepspeed.precision: fp16 is not supported on CPU; use fp32 (or auto)")
    return precision


def dtype_of(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build_config(spec, device: str, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for this job (spec = FineTuneJobSpec)."""
    tr, ds = spec.training, spec.deepspeed
    precision = resolve_precision(ds.precision, device)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tr.batch_size,
        "gradient_accumulation_steps": tr.gradient_accumulation,
        "train_batch_size": tr.batch_size * tr.gradient_accumulation * world_size,
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_optimization": {"stage": ds.zero_stage},
        "zero_allow_untested_optimizer": True,
    }
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                       "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    if ds.offload_optimizer:
        cfg["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": device == "cuda"}
    if device == "cuda":
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": tr.learning_rate, "betas": [0.9, 0.999],
                                                        "eps": 1e-8, "weight_decay": tr.weight_decay}}
    else:
        # torch AdamW (client optimizer): also under offload, where DeepSpeed would insist on its
        # JIT-built CPUAdam otherwise.
        cfg["zero_force_ds_cpu_optimizer"] = False
    if ds.config:
        cfg = deep_merge(cfg, ds.config)
    return cfg


def config_precision(cfg: dict) -> str:
    if cfg.get("bf16", {}).get("enabled"):
        return "bf16"
    if cfg.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


def lr_lambda(warmup: int, total: int):
    total = max(int(total), 1)
    warmup = max(int(warmup), 0)

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    return fn


def create_engine(model, spec, device: str, world_size: int, total_steps: int):
    """deepspeed.initialize over the trainable parameters. Returns (engine, ds_config)."""
    import deepspeed

    cfg = build_config(spec, device, world_size)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise EngineConfigError("no trainable parameters")
    tr = spec.training
    sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tr.warmup_steps, total_steps))  # noqa: E731
    if "optimizer" in cfg:
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, lr_scheduler=sched, config=cfg)
    else:
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": tr.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=tr.learning_rate, betas=(0.9, 0.999), eps=1e-8)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=cfg)
    return engine, cfg


def current_lr(engine) -> float:
    try:
        return float(engine.get_lr()[0])
    except Exception:
        return float("nan")
