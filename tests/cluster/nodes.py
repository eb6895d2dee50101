"""The simulated GPU nodes: what kwok manages and the scheduler places pods on. They advertise what
the NVIDIA device plugin and GPU feature discovery would publish on an 8 x H100 server."""

from __future__ import annotations

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"  # kwok manages the nodes annotated `fake`
GPU_RESOURCE = "nvidia.com/gpu"
GPUS_PER_NODE = 8
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"


def gpu_node(name: str, ip: str) -> dict:
    resources = {"cpu": "192", "memory": "2Ti", "ephemeral-storage": "20Ti", "pods": "110",
                 GPU_RESOURCE: str(GPUS_PER_NODE)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(GPUS_PER_NODE),
                "nvidia.com/gpu.memory": "81559",
            },
        },
        # Nodes may carry status on creation: kwok's node-initialize stage keeps these figures.
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        },
    }
