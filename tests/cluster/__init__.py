"""A real Kubernetes control plane for tests and demos, with simulated GPU nodes.

`python -m tests.cluster up|down` (make cluster-up / cluster-down) runs one in .cluster/ for
demos; tests get one from the session fixture in tests/conftest.py. The test modules of this package
(test_*.py) show what it can do.
"""

from .binaries import control_plane_binaries
from .control_plane import LocalControlPlane, StartupError
from .handle import SIMULATE_EXIT_ANNOTATION, Cluster, CommandError
from .nodes import GPU_PRODUCT, GPU_RESOURCE, GPUS_PER_NODE

__all__ = [
    "Cluster", "CommandError", "LocalControlPlane", "StartupError", "control_plane_binaries",
    "SIMULATE_EXIT_ANNOTATION", "GPU_PRODUCT", "GPU_RESOURCE", "GPUS_PER_NODE",
]
