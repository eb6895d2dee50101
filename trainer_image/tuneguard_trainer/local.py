"""`tuneguard run JOB.yaml --out DIR`: one FineTuneJob on this machine, in this process.

The same loop as the pods (tuneguard_trainer.loop.run) in a world of one: DeepSpeed on a free local
port (gloo on CPU, nccl on CUDA), progress bars on the terminal, the base-vs-tuned table at the end.
Exit codes: 0 done; 2 the job or its data is invalid (nothing written); 1 a failure during the run.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("tuneguard.trainer")


def run_local(job_path: Path, out: Path, device: str = "auto") -> int:
    from tuneguard.validation import InvalidManifest, load_job

    try:
        job = load_job(Path(job_path))
    except (InvalidManifest, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # A local run is one process; do not inherit a launcher's world by accident.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(var, None)
    threads = configure_threads()
    from .loop import JobFailed, run

    if threads is not None:
        print(f"torch threads: {threads} (load average {os.getloadavg()[0]:.1f} on {_cores()} cores; "
              f"set OMP_NUM_THREADS to choose)", file=sys.stderr)

    try:
        run(Path(job_path), Path(out), device, job=job)
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if e.before_training else 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the latest checkpoint", file=sys.stderr)
        return 130
    # The world of one stays up until the process exits: DeepSpeed caches its process groups, so a
    # second run_local in the same process (tests, notebooks) reuses this one instead of a new one.
    atexit.register(_destroy_process_group)
    return 0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_threads() -> int | None:
    """Intra-op threads for a local CPU run, unless OMP_NUM_THREADS says otherwise.

    On a machine that other work keeps busy, OpenMP threads spin waiting for peers the scheduler has
    descheduled: measured on 2 shared cores (load 9), a SmolLM2 forward took 2.5x longer in wall time with
    2 threads than with 1, for 3x the CPU time. So: as many threads as cores are idle, at least one."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = _cores()
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None
    idle = int(cores - load + 0.5)
    return max(1, min(cores, idle))


def configure_threads() -> int | None:
    """The best tokenizer and torch thread settings for a CPU box shared with other work (every local
    command: run, plan); returns the torch threads chosen, or None where OMP_NUM_THREADS decides."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = choose_threads()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    return threads


def _destroy_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # pragma: no cover
        pass
