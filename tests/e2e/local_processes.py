"""The operator and a trainer worker as local processes against a real cluster.

Containers do not run here, so the operator runs as `tuneguard operator` on this machine with a
kubeconfig (the chart's ServiceAccount token, or the admin's), and a trainer runs as `tuneguard worker`
with the ConfigMap and environment the operator put into the worker pod spec.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.cluster.polling import wait_for
from tests.cluster.processes import free_port, http_ok, terminate
from tests.prometheus.harness import env_with_repo_paths

ROOT = Path(__file__).resolve().parents[2]


def token_kubeconfig(cluster, namespace: str, service_account: str, path: Path, duration: str = "2h") -> Path:
    """A kubeconfig that authenticates as namespace/service_account with a TokenRequest token."""
    token = cluster.kubectl("create", "token", service_account, "-n", namespace, f"--duration={duration}").stdout.strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    ctx_name = admin.get("current-context") or admin["contexts"][0]["name"]
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    cl = dict(next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"]))
    ca = cl.get("certificate-authority")
    if ca and not Path(ca).is_absolute():  # relative to the admin kubeconfig
        cl["certificate-authority"] = str(Path(cluster.kubeconfig).parent / ca)
    if ca and "certificate-authority-data" not in cl:
        cl["certificate-authority-data"] = base64.b64encode(Path(cl.pop("certificate-authority")).read_bytes()).decode()
    user = f"system:serviceaccount:{namespace}:{service_account}"
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cl}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "cluster", "user": user, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


class LocalOperator:
    """`tuneguard operator` in a child process; .metrics_url, .log, .stop()."""

    def __init__(self, kubeconfig: Path, workdir: Path, namespaces: list[str] | None = None,
                 args: list[str] | None = None):
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log = Path(workdir) / "operator.log"
        watch = ["--all-namespaces"] if namespaces is None else [f"--namespace={n}" for n in namespaces]
        cmd = [sys.executable, "-m", "tuneguard.cli", "operator", *watch, f"--metrics-port={self.metrics_port}",
               f"--health-port={self.health_port}", "--log-format=plain", *(args or [])]
        env = {**env_with_repo_paths(ROOT), "KUBECONFIG": str(kubeconfig)}
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def wait_healthy(self, timeout: float = 90) -> None:
        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.tail()}")
            return http_ok(f"http://127.0.0.1:{self.health_port}/healthz")

        wait_for("the operator's /healthz", healthy, timeout, interval=0.5, describe=self.tail)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    def tail(self, n: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        terminate(self.proc)


def get_json(cluster, *args: str) -> dict:
    import json

    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def worker_process(cluster, namespace: str, job: str, workdir: Path, metrics_port: int,
                   kubeconfig: Path | None = None) -> tuple[list[str], dict, Path]:
    """The command, environment and config file of worker 0 as the operator rendered them.

    Taken from the cluster: the ConfigMap's job file and the Indexed Job's pod template env, with
    the substitutions a local process needs: NODE_RANK (a fieldRef) = 0, MASTER_ADDR = 127.0.0.1
    (the pod DNS name does not resolve here), MASTER_PORT and TUNEGUARD_METRICS_PORT = free local
    ports, the config file (--config) and TUNEGUARD_OUTPUT_DIR under workdir, cache dirs left to the user's.
    """
    from tuneguard import contract

    from tuneguard_operator import render

    cm = get_json(cluster, "configmap", "-n", namespace, render.config_name(job))
    config = Path(workdir) / contract.CONFIG_FILE
    config.write_text(cm["data"][contract.CONFIG_FILE])
    wj = get_json(cluster, "job.batch", "-n", namespace, render.worker_job_name(job))
    (container,) = [c for c in wj["spec"]["template"]["spec"]["containers"] if c["name"] == render.CONTAINER]
    env = env_with_repo_paths(ROOT)
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
    env.update({
        contract.ENV_NODE_RANK: "0",
        contract.ENV_MASTER_ADDR: "127.0.0.1",
        contract.ENV_MASTER_PORT: str(free_port()),
        contract.ENV_METRICS_PORT: str(metrics_port),
        contract.ENV_OUTPUT_DIR: str(Path(workdir) / "output"),
        "KUBECONFIG": str(kubeconfig or cluster.kubeconfig),
    })
    for k in ("HF_HOME", "XDG_CACHE_HOME"):  # the pod's emptyDir paths: use this machine's caches
        env.pop(k, None)
    cmd = list(container["command"])
    assert cmd[:2] == ["tuneguard", "worker"], cmd
    cmd = [sys.executable, "-m", "tuneguard.cli", *cmd[1:]]
    cmd[cmd.index("--config") + 1] = str(config)
    return cmd, env, config
