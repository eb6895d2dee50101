"""Kueue (sigs.k8s.io/kueue, built by scripts/build-control-plane.sh) for real beside the test control plane: its
manager as a process, its CRDs, and its webhooks for Jobs and its own kinds, so a Job with a queue-name label is
suspended on creation by Kueue's webhook and resumed by its controller on admission, as in a cluster.

In a cluster the API server calls the webhooks through a Service and Kueue makes its own certificates; here the
API server reaches the manager at 127.0.0.1, so the webhooks are registered by URL with a serving certificate for
that address from a CA of our own (Kueue's internal certificate management off, as its docs allow)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import yaml

from .binaries import control_plane_binaries
from .pki import Pki
from .polling import wait_for
from .processes import ProcessGroup, free_port, http_ok

GROUPS = {"batch", "kueue.x-k8s.io"}  # the webhooks of the batch/job integration and of Kueue's own kinds
# Without its internal certificate management Kueue reads its metrics server's certificate from this fixed path
# (cmd/kueue/main.go), where a cluster mounts a Secret; the test writes it there and removes what it made.
METRICS_CERTS = Path("/etc/kueue/metrics/certs")


class Kueue:
    def __init__(self, cluster, state_dir: Path, *, pods_ready_timeout: str = "5m"):
        self.cluster = cluster
        self.dir = Path(state_dir)
        self.pods_ready_timeout = pods_ready_timeout
        self.group = ProcessGroup(self.dir, die_with_parent=True)
        self.port, self.health_port, self.metrics_port = free_port(), free_port(), free_port()
        self.binary = control_plane_binaries(["kueue"])["kueue"]

    def start(self, timeout: float = 120.0) -> "Kueue":
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # what it wrote outside its directory goes too
            raise

    def _start(self, timeout: float) -> "Kueue":
        root = self.binary.parent
        self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(root / "crds"))
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(root / "crds"),
                             timeout=90)
        pki = Pki(self.dir / "pki")
        serving = pki.issue("webhook", "/CN=kueue-webhook", server_sans=["IP:127.0.0.1"])
        certs = self.dir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copy(serving.cert, certs / "tls.crt")
        shutil.copy(serving.key, certs / "tls.key")
        self._made_metrics_certs = not METRICS_CERTS.parent.parent.exists()
        if self._made_metrics_certs:
            shutil.copytree(certs, METRICS_CERTS)
        elif not (METRICS_CERTS / "tls.crt").exists():
            raise RuntimeError(f"{METRICS_CERTS.parent.parent} exists without {METRICS_CERTS}/tls.crt: not ours to "
                               "change; remove it or give Kueue its metrics certificate there")
        config = self.dir / "config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.metrics_port}"},
            "webhook": {"port": self.port, "host": "127.0.0.1", "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["batch/job"]},
            # all workers of a job start, or Kueue evicts it and requeues (no half-admitted gangs)
            "waitForPodsReady": {"timeout": self.pods_ready_timeout, "blockAdmission": True},
        }))
        self._register_webhooks(root / "webhooks.yaml", pki.ca.cert)
        self.group.start("kueue", self.binary, [f"--config={config}", f"--kubeconfig={self.cluster.kubeconfig}",
                                                "--feature-gates=VisibilityOnDemand=false"])

        def ready() -> bool:
            self.group.check_alive()
            return self._ready()

        wait_for("Kueue to be ready", ready, timeout, interval=0.5, describe=self.group.processes[0].log_tail)
        return self

    def _register_webhooks(self, manifests: Path, ca: Path) -> None:
        bundle = base64.b64encode(ca.read_bytes()).decode()
        docs = []
        for doc in yaml.safe_load_all(manifests.read_text()):
            if not doc:
                continue
            hooks = [w for w in doc["webhooks"] if any(set(r.get("apiGroups") or []) & GROUPS for r in w["rules"])]
            for w in hooks:
                w["clientConfig"] = {"url": f"https://127.0.0.1:{self.port}{w['clientConfig']['service']['path']}",
                                     "caBundle": bundle}
            doc["metadata"] = {"name": f"kueue-{doc['kind'].lower()}"}
            doc["webhooks"] = hooks
            docs.append(doc)
        self.cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def _ready(self) -> bool:
        return http_ok(f"http://127.0.0.1:{self.health_port}/readyz")

    def log_tail(self, lines: int = 40) -> str:
        return self.group.processes[0].log_tail(lines) if self.group.processes else "(not started)"

    def stop(self) -> None:
        self.group.stop()
        if getattr(self, "_made_metrics_certs", False):
            shutil.rmtree(METRICS_CERTS.parent.parent, ignore_errors=True)
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            self.cluster.kubectl("delete", kind, f"kueue-{kind}", "--ignore-not-found", check=False)
