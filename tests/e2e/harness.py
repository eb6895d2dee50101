"""End-to-end helpers: the operator as a real `tuneguard operator` process, and small kubectl wrappers.

Waits go through tests.cluster.polling.wait_for: a deadline and a message that says what was awaited and
what was seen last, never bare sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.bad_manifests import valid_job
from tests.cluster.polling import wait_for  # the e2e tests import it from here, with the helpers below
from tests.cluster.processes import free_port, terminate

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """`tuneguard operator --all-namespaces` against the test cluster, as a subprocess."""

    def __init__(self, cluster, log_dir: Path, args: tuple[str, ...] = ("--all-namespaces",)):
        self.cluster = cluster
        self.log_dir = log_dir
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.starts = 0
        self.peak_rss_kib = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self, timeout: float = 60) -> "OperatorProcess":
        self.starts += 1
        env = dict(self.cluster.env)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "operator"), env.get("PYTHONPATH", "")])
        cmd = [sys.executable, "-m", "tuneguard.cli", "operator", *self.args,
               "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for("the operator's /healthz", self.healthy, timeout=timeout, describe=self.tail)
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc and self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def rss_kib(self) -> tuple[int, int]:
        """(current RSS, peak RSS) of the operator process in KiB, from /proc."""
        cur = peak = 0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1])
        self.peak_rss_kib = max(self.peak_rss_kib, peak)
        return cur, peak

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.rss_kib()
            except OSError:
                pass
            terminate(self.proc, sig=signal.SIGKILL if kill else signal.SIGTERM)
        self.log.close()
        self.proc = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("operator-*.log")))


class Kubectl:
    """JSON-returning kubectl helpers bound to one cluster."""

    def __init__(self, cluster):
        self.cluster = cluster

    def __call__(self, *args: str, **kw):
        return self.cluster.kubectl(*args, **kw)

    def get(self, *args: str) -> dict:
        return json.loads(self.cluster.kubectl("get", *args, "-o", "json").stdout)

    def get_or_none(self, kind: str, name: str, ns: str) -> dict | None:
        out = self.cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", "--ignore-not-found").stdout
        return json.loads(out) if out.strip() else None

    def apply(self, doc: dict | list[dict], ns: str | None = None):
        docs = doc if isinstance(doc, list) else [doc]
        text = yaml.safe_dump_all(docs)
        args = ["apply", "-f", "-"] + (["-n", ns] if ns else [])
        return self.cluster.kubectl(*args, input=text)

    def ftj(self, name: str, ns: str) -> dict | None:
        return self.get_or_none("finetunejob", name, ns)

    def status(self, name: str, ns: str) -> dict:
        return (self.ftj(name, ns) or {}).get("status") or {}

    def pods(self, name: str, ns: str, running: bool = False) -> list[dict]:
        items = self.get("pods", "-n", ns, "-l", f"tuneguard.io/job={name}")["items"]
        items = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        if running:
            items = [p for p in items if p["status"].get("phase") == "Running"]
        return sorted(items, key=lambda p: p["metadata"]["annotations"].get(
            "batch.kubernetes.io/job-completion-index", ""))

    def printed_row(self, name: str, ns: str) -> dict[str, str]:
        """`kubectl get ftj NAME` as {column: value}, sliced at the header's offsets (empty cells stay empty)."""
        header, row = self("get", "ftj", name, "-n", ns).stdout.splitlines()[:2]
        starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
        bounds = list(zip(starts, starts[1:] + [None]))
        return {header[a:b].strip(): row[a:b].strip() for a, b in bounds}

    def gpu_holders(self) -> list[str]:
        """Every pod in the cluster that holds GPUs (bound, not ended; Terminating ones too), as
        `ns/name on node (phase[, terminating])`: what keeps the next test's 8-GPU pods pending."""
        held = []
        for p in self.get("pods", "--all-namespaces")["items"]:
            requests = [c.get("resources", {}).get("requests", {}) for c in p["spec"]["containers"]]
            phase = p["status"].get("phase")
            if p["spec"].get("nodeName") and phase not in ("Succeeded", "Failed") \
                    and any(r.get("nvidia.com/gpu", "0") != "0" for r in requests):
                gone = ", terminating" if p["metadata"].get("deletionTimestamp") else ""
                held.append(f"{p['metadata']['namespace']}/{p['metadata']['name']} on {p['spec']['nodeName']} ({phase}{gone})")
        return held

    def events(self, name: str, ns: str) -> list[dict]:
        items = self.get("events", "-n", ns, "--field-selector",
                         f"involvedObject.kind=FineTuneJob,involvedObject.name={name}")["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or "")

    def wait_phase(self, name: str, ns: str, phase: str, timeout: float = 60, **match) -> dict:
        def check():
            st = self.status(name, ns)
            return st if st.get("phase") == phase and all(st.get(k) == v for k, v in match.items()) else None
        return wait_for(f"FineTuneJob {ns}/{name} phase {phase} {match or ''}", check, timeout,
                        describe=lambda: json.dumps({k: v for k, v in self.status(name, ns).items()
                                                     if k != "conditions"})[:600])


def condition(status: dict, type_: str) -> dict | None:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


def cpu_job(name: str, workers: int = 2, **run_policy) -> dict:
    """A small job that fits many times on the simulated nodes (no GPUs, no PVCs)."""
    doc = valid_job(name)
    doc["spec"].update({
        "method": {"type": "self-distill"},
        "guardrails": {"maxHallucinationIncrease": 0.1, "action": "warn"},
        "resources": {"workers": workers, "gpusPerWorker": 0, "cpu": "100m", "memory": "128Mi", "shmSize": "64Mi"},
        "runPolicy": {"backoffLimit": 3, **run_policy},
    })
    return doc
