"""What a test gets to talk to a cluster: the local control plane, or any cluster named by KUBECONFIG."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# A ConfigMap in kube-public that only our control plane has: it says nodes are kwok's and
# finish_pod works, also when the tests reach that control plane through KUBECONFIG.
SIMULATION_MARKER = "tuneguard-simulated-cluster"
SIMULATE_EXIT_ANNOTATION = "tuneguard.io/simulate-exit"


class CommandError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


@dataclass
class Cluster:
    kubeconfig: Path
    binaries: dict[str, Path] = field(default_factory=dict)  # name -> path: kubectl, helm, kwok, ...
    simulated: bool = False  # nodes are kwok's: finish_pod works
    real_node: object = None  # tests.cluster.real_node.RealNode when a real node runs beside kwok's
    control_plane: object = None  # tests.cluster.LocalControlPlane when the tests started it (restart())

    @property
    def env(self) -> dict[str, str]:
        """The environment for a child process (an operator, a script) that should use this cluster:
        KUBECONFIG set, and kubectl and helm first on PATH."""
        tools = [str(self.binaries[t].parent) for t in ("kubectl", "helm") if t in self.binaries]
        path = os.pathsep.join(dict.fromkeys([*tools, os.environ.get("PATH", "")]))
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    def _run(self, tool: str, args: tuple[str, ...], input: str | None, check: bool, timeout: float):
        done = subprocess.run([str(self.binary(tool)), *args], input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise CommandError(done.returncode, done.args, done.stdout, done.stderr)
        return done

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs kubectl against this cluster; raises CommandError (with stderr) on failure if check."""
        return self._run("kubectl", args, input, check, timeout)

    def helm(self, *args: str, input: str | None = None, check: bool = True,
             timeout: float = 300) -> subprocess.CompletedProcess:
        return self._run("helm", args, input, check, timeout)

    def binary(self, name: str) -> Path:
        path = self.binaries.get(name) or (Path(p) if (p := shutil.which(name)) else None)
        if path is None:
            raise RuntimeError(f"{name} not found: run scripts/build-control-plane.sh or put it on PATH")
        return path

    def api_client(self):
        """A kubernetes.client.ApiClient for this cluster (a new one per call: close it when done)."""
        from kubernetes import config  # imported lazily: it takes a second

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def finish_pod(self, namespace: str, name: str, exit_code: int = 0, timeout: float = 30) -> None:
        """Ends a Running pod on a simulated node as if its containers exited with exit_code (kwok's
        pod-simulate-exit stage) and waits for the phase: Succeeded for 0, Failed otherwise."""
        if not self.simulated:
            raise RuntimeError("finish_pod needs the simulated nodes of tests.cluster (kwok)")
        self.kubectl("annotate", "pod", "-n", namespace, name, f"{SIMULATE_EXIT_ANNOTATION}={int(exit_code)}",
                     "--overwrite")
        phase = "Succeeded" if exit_code == 0 else "Failed"
        done = self.kubectl("wait", "-n", namespace, f"pod/{name}", f"--for=jsonpath={{.status.phase}}={phase}",
                            f"--timeout={int(timeout)}s", timeout=timeout + 10, check=False)
        # A controller may react to the finished pod (an operator restarting its group deletes the Job)
        # and the pod can be gone before `kubectl wait` first looks: that pod did finish.
        if done.returncode != 0 and "NotFound" not in done.stderr:
            raise CommandError(done.returncode, done.args, done.stdout, done.stderr)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, binaries: dict[str, Path]) -> "Cluster":
        """A cluster we did not start; simulated if it is one of ours (the marker ConfigMap exists)."""
        cluster = cls(Path(kubeconfig), binaries)
        marker = cluster.kubectl("get", "configmap", "-n", "kube-public", SIMULATION_MARKER,
                                 "--ignore-not-found", "-o", "name", check=False)
        cluster.simulated = marker.returncode == 0 and bool(marker.stdout.strip())
        return cluster
