"""`tuneguard worker --config /etc/tuneguard/job.yaml`: the entrypoint of every trainer pod.

The operator runs one pod per node (an Indexed Job) with the launch environment of
tuneguard.contract: MASTER_ADDR, MASTER_PORT, NNODES, NPROC_PER_NODE, NODE_RANK (the completion
index), TUNEGUARD_OUTPUT_DIR, TUNEGUARD_METRICS_PORT, TUNEGUARD_STATUS_PATCH, TUNEGUARD_JOB_NAME/NAMESPACE.
This module is the one place that turns that topology into torch.distributed's RANK / WORLD_SIZE /
LOCAL_RANK (torchrun does it for NPROC_PER_NODE > 1, ``Topology.torch_env`` for one process per node).

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
from typing import NamedTuple, Optional

from tuneguard import contract


def output_dir(job, out: Optional[Path]) -> Path:
    if out is not None:
        return Path(out)
    env = os.environ.get(contract.ENV_OUTPUT_DIR)
    if env:
        return Path(env)
    uri = job.spec.output.uri
    if uri:
        return Path(contract.pvc_mount_path(uri) or uri)
    return Path(contract.OUTPUT_DIR)


class Topology(NamedTuple):
    """The job's shape as the operator put it in the pod's environment."""
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: str

    @classmethod
    def from_env(cls, env) -> "Topology":
        return cls(int(env.get(contract.ENV_NNODES, "1") or 1), int(env.get(contract.ENV_NPROC_PER_NODE, "1") or 1),
                   int(env.get(contract.ENV_NODE_RANK, "0") or 0), env.get(contract.ENV_MASTER_ADDR, "127.0.0.1"),
                   env.get(contract.ENV_MASTER_PORT, str(contract.MASTER_PORT)))

    def torchrun_args(self) -> list[str]:
        return [f"--nnodes={self.nnodes}", f"--nproc-per-node={self.nproc_per_node}", f"--node-rank={self.node_rank}",
                f"--master-addr={self.master_addr}", f"--master-port={self.master_port}"]

    def torch_env(self) -> dict[str, str]:
        """torch.distributed's launch variables for one process per node: rank node_rank of nnodes."""
        assert self.nproc_per_node == 1, "torchrun sets them for several processes per node"
        return {"RANK": str(self.node_rank), "WORLD_SIZE": str(self.nnodes), "LOCAL_RANK": "0",
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": self.master_port}


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
    under_launcher = "RANK" in env and "LOCAL_RANK" in env
    if not under_launcher:
        topo = Topology.from_env(env)
        if topo.nproc_per_node > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", *topo.torchrun_args(),
                   "-m", "tuneguard_trainer.worker", "--config", str(config), "--out", str(out_dir)]
            print("launching: " + " ".join(cmd), file=sys.stderr, flush=True)
            return subprocess.call(cmd)
        env.update(topo.torch_env())

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
