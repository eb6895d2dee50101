"""python -m tests.cluster up|down|status: a long-lived local control plane in <repo>/.cluster."""

from __future__ import annotations

import argparse
import sys
import time

from .binaries import REPO
from .control_plane import LocalControlPlane, StartupError
from .processes import ProcessGroup

STATE_DIR = REPO / ".cluster"
KUBECONFIG = STATE_DIR / "kubeconfig"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--gpu-nodes", type=int, default=2, help="simulated 8-GPU nodes (up)")
    parser.add_argument("--real-node", action="store_true",
                        help="also start the real node (kubelet + containerd; root, one per machine) (up)")
    args = parser.parse_args(argv)
    plane = LocalControlPlane(STATE_DIR, die_with_parent=False, gpu_nodes=args.gpu_nodes, kubeconfig=KUBECONFIG,
                              real_node=args.real_node)

    if args.command == "status":
        for p in ProcessGroup.adopt(STATE_DIR).processes:
            print(f"{p.name:24} pid {p.pid:7} {'running' if p.alive() else 'GONE'}")
        return 0 if plane.running() else 1
    if args.command == "down":
        plane.stop()
        print(f"stopped; removed {STATE_DIR}", file=sys.stderr)
        # What a real node left after a crash (its state dir gone, its machine-wide changes not):
        # cleaned up once no node holds the lock.
        from . import real_node

        if real_node.lock_free() and real_node.leftovers():
            for line in real_node.cleanup_machine():
                print(f"real node: {line}", file=sys.stderr)
        return 0

    if plane.running():
        print(f"already running (state in {STATE_DIR})", file=sys.stderr)
    else:
        plane.stop()  # clear the leftovers of a plane that died on its own
        started = time.monotonic()
        try:
            plane.start()
        except StartupError as e:
            print(f"cluster-up failed: {e}\n(state kept in {STATE_DIR}; `make cluster-down` removes it)",
                  file=sys.stderr)
            return 1
        print(f"control plane ready in {time.monotonic() - started:.1f} s; logs in {STATE_DIR / 'logs'}",
              file=sys.stderr)
    print(f"export KUBECONFIG={KUBECONFIG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
