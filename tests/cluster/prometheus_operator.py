"""The Prometheus Operator (github.com/prometheus-operator/prometheus-operator, built by
scripts/build-control-plane.sh) for real beside the test control plane: its monitoring.coreos.com CRDs and
its manager as a process. It reads ServiceMonitors, PodMonitors and PrometheusRules and writes what a
Prometheus runs from, as in a cluster: the scrape configuration (Secret `prometheus-<name>`, key
`prometheus.yaml.gz`) and the rule files (ConfigMaps `prometheus-<name>-rulefiles-<n>`).

Its StatefulSet would run Prometheus in a pod with in-cluster credentials, beside a config-reloader that fills
the pod's environment into the configuration ($(SHARD), $(POD_NAME)). Here a Prometheus process on the host
runs the generated configuration with what the pod would have given it (`local_config`): the reloader's
substitutions, for shard 0 of replica 0, and the test cluster's kubeconfig in each Kubernetes
service-discovery block in place of the pod's service account."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
from pathlib import Path

import yaml

from .binaries import control_plane_binaries
from .polling import wait_for
from .processes import ProcessGroup, free_port, http_ok

# What the rule-file ConfigMaps are labelled with (pkg/prometheus/server/rules.go).
RULEFILE_LABELS = "managed-by=prometheus-operator,prometheus-name={name}"


class PrometheusOperator:
    def __init__(self, cluster, state_dir: Path):
        self.cluster = cluster
        self.dir = Path(state_dir)
        self.group = ProcessGroup(self.dir, die_with_parent=True)
        self.port = free_port()
        binaries = control_plane_binaries(["prometheus-operator", "prometheus"])
        self.binary = binaries["prometheus-operator"]
        self.crds = self.binary.parent / "crds"
        self.prometheus = binaries["prometheus"]  # built with Kubernetes service discovery (Debian's has none)

    def start(self, timeout: float = 120.0) -> "PrometheusOperator":
        try:
            self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(self.crds), timeout=120)
            self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(self.crds),
                                 timeout=90)
            self.group.start("prometheus-operator", self.binary, [
                f"--web.listen-address=127.0.0.1:{self.port}", "--log-format=logfmt", "--log-level=info"],
                env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)})  # out of cluster: no flag for it

            def healthy() -> bool:
                self.group.check_alive()
                return http_ok(f"http://127.0.0.1:{self.port}/healthz")

            wait_for("the Prometheus Operator's /healthz", healthy, timeout, interval=0.5, describe=self.log_tail)
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Prometheus objects first, while the operator can drop its finalizer from them; then the process and
        the CRDs (every monitor with them): later tests expect a cluster without them."""
        if self.group.processes:
            self.cluster.kubectl("delete", "prometheuses", "--all", "--all-namespaces", "--timeout=60s", check=False,
                                 timeout=90)
        self.group.stop()
        self.cluster.kubectl("delete", "-f", str(self.crds), "--ignore-not-found", "--wait=false", check=False,
                             timeout=120)

    def prometheus_version(self) -> str:
        """`v3.5.0`: what a Prometheus object's spec.version says, so the configuration is made for this binary."""
        out = subprocess.run([str(self.prometheus), "--version"], capture_output=True, text=True, check=True).stdout
        return "v" + out.split()[2]

    def log_tail(self, lines: int = 40) -> str:
        return self.group.processes[0].log_tail(lines) if self.group.processes else "(not started)"

    def generated(self, ns: str, name: str, timeout: float = 60.0, want: tuple[str, ...] = ()) -> tuple[dict, dict]:
        """(scrape configuration, {rule file name: text}) the operator generated for Prometheus ns/name, once its
        configuration has a scrape job whose name contains each of `want`."""
        jobs: list[str] = []  # those of the configuration seen last

        def configuration() -> dict | None:
            out = self.cluster.kubectl("get", "secret", f"prometheus-{name}", "-n", ns, "-o", "json",
                                       "--ignore-not-found", check=False).stdout
            config = {}
            if out.strip():
                raw = base64.b64decode(json.loads(out)["data"]["prometheus.yaml.gz"])
                config = yaml.safe_load(gzip.decompress(raw)) or {}
            jobs[:] = [j["job_name"] for j in config.get("scrape_configs") or []]
            return config if config and all(any(w in j for j in jobs) for w in want) else None

        config = wait_for(f"a generated configuration with scrape jobs {want} for {ns}/{name}", configuration,
                          timeout, interval=1, describe=lambda: f"jobs: {jobs}\n{self.log_tail()}")
        maps = json.loads(self.cluster.kubectl("get", "configmaps", "-n", ns, "-l", RULEFILE_LABELS.format(name=name),
                                               "-o", "json").stdout)["items"]
        rules = {file: text for m in maps for file, text in (m.get("data") or {}).items()}
        return config, rules


def local_config(config: dict, name: str, kubeconfig: Path, rules_dir: Path, rules: dict[str, str]) -> dict:
    """The configuration generated for Prometheus `name`, for a Prometheus on the host: the config-reloader's
    $(VAR) substitutions as in the StatefulSet's first pod, service discovery through `kubeconfig` instead of
    the pod's service account, and the rule files written under rules_dir."""
    rules_dir.mkdir(parents=True, exist_ok=True)
    for file, text in rules.items():
        (rules_dir / file).write_text(text)
    pod_env = {"SHARD": "0", "POD_NAME": f"prometheus-{name}-0"}
    text = json.dumps(config)
    unknown = set(re.findall(r"\$\(([A-Z_]+)\)", text)) - set(pod_env)
    assert not unknown, f"the generated configuration expects pod variables this harness does not set: {unknown}"
    out = json.loads(re.sub(r"\$\(([A-Z_]+)\)", lambda m: pod_env[m.group(1)], text))
    for job in out.get("scrape_configs") or []:
        for sd in job.get("kubernetes_sd_configs") or []:
            sd["kubeconfig_file"] = str(kubeconfig)
    out["rule_files"] = [str(rules_dir / "*.yaml")] if rules else []
    return out
