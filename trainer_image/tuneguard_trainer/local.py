"""`tuneguard run JOB.yaml --out DIR`: one FineTuneJob on this machine, in this process.

The same loop as the pods (tuneguard_trainer.loop.run) in a world of one: DeepSpeed on a free local
port (gloo on CPU, nccl on CUDA), progress bars on the terminal, the base-vs-tuned table at the end.
Exit codes: 0 done; 2 the job or its data is invalid (nothing written); 1 a failure during the run.
"""

from __future__ import annotations

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
    # The best tokenizer/thread settings for a CPU box shared with other work.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .loop import JobFailed, run

    try:
        run(Path(job_path), Path(out), device, job=job)
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if e.before_training else 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the latest checkpoint", file=sys.stderr)
        return 130
    finally:
        _destroy_process_group()
    return 0


def _destroy_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # pragma: no cover
        pass
