"""`tuneguard worker --config /etc/tuneguard/job.yaml`: the entrypoint of every trainer pod.

The operator runs one pod per node (an Indexed Job) with the launch environment of
tuneguard.contract: MASTER_ADDR, MASTER_PORT, NNODES, NPROC_PER_NODE, NODE_RANK (the completion
index), WORLD_SIZE (= NNODES * NPROC_PER_NODE), TUNEGUARD_OUTPUT_DIR, TUNEGUARD_METRICS_PORT,
TUNEGUARD_STATUS_PATCH, TUNEGUARD_JOB_NAME/NAMESPACE.

- NPROC_PER_NODE > 1: this process becomes the node's launcher: it runs torch.distributed.run
  (torchrun, static rendezvous at MASTER_ADDR:MASTER_PORT) with NPROC_PER_NODE copies of
  ``python -m tuneguard_trainer.worker`` and exits with their status.
- NPROC_PER_NODE == 1: this process is rank NODE_RANK of a world of NNODES and trains directly.
- Under torchrun (RANK and LOCAL_RANK set): one rank of the loop.

The output directory is --out, else $TUNEGUARD_OUTPUT_DIR, else spec.output.uri (pvc://claim/path is
read under /mnt/pvc/claim/path), else /output. Every rank runs the same loop (tuneguard_trainer.loop).
Exit codes: 0 done; 2 invalid job or data (nothing written); 1 failure during training.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from tuneguard import contract


def output_dir(job, out: Optional[Path]) -> Path:
    if out is not None:
        return Path(out)
    env = os.environ.get(contract.ENV_OUTPUT_DIR)
    if env:
        return Path(env)
    uri = job.spec.output.uri
    if uri:
        if uri.startswith("pvc://"):
            claim, _, sub = uri[len("pvc://"):].partition("/")
            return Path(contract.PVC_MOUNT_ROOT) / claim / sub
        return Path(uri)
    return Path(contract.OUTPUT_DIR)


def _device(job) -> str:
    import torch

    return "cuda" if job.spec.resources.gpus_per_worker > 0 and torch.cuda.is_available() else "cpu"


def main(config: Path, out: Optional[Path] = None) -> int:
    from tuneguard.validation import InvalidManifest, load_job

    try:
        job = load_job(Path(config))
    except (InvalidManifest, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = output_dir(job, out)
    env = os.environ
    nnodes = int(env.get(contract.ENV_NNODES, "1") or 1)
    nproc = int(env.get(contract.ENV_NPROC_PER_NODE, "1") or 1)
    node_rank = int(env.get(contract.ENV_NODE_RANK, "0") or 0)
    master_addr = env.get(contract.ENV_MASTER_ADDR, "127.0.0.1")
    master_port = env.get(contract.ENV_MASTER_PORT, str(contract.MASTER_PORT))

    under_launcher = "RANK" in env and "LOCAL_RANK" in env
    if not under_launcher and nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
               f"--node-rank={node_rank}", f"--master-addr={master_addr}", f"--master-port={master_port}",
               "-m", "tuneguard_trainer.worker", "--config", str(config), "--out", str(out_dir)]
        print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
        return subprocess.call(cmd)
    if not under_launcher:
        env["RANK"] = str(node_rank)
        env["WORLD_SIZE"] = str(nnodes)
        env["LOCAL_RANK"] = "0"
        env.setdefault("MASTER_ADDR", master_addr)
        env.setdefault("MASTER_PORT", master_port)

    from .loop import JobFailed, run

    try:
        run(Path(config), out_dir, _device(job), job=job, progress=sys.stderr.isatty() or env.get("RANK") == "0")
    except JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if e.before_training else 1
    finally:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m tuneguard_trainer.worker")
    ap.add_argument("--config", default=contract.CONFIG_PATH)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sys.exit(main(Path(a.config), Path(a.out) if a.out else None))
