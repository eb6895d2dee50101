"""A real Prometheus (Debian's `prometheus` binary) on loopback, for the end-to-end tests.

It scrapes static targets with the same semantics the chart's monitors configure: honor_labels, so the
trainer's and operator's own `job`/`namespace` labels win, while `up{job=...}` carries the scrape job's
name ("tuneguard-operator" as the chart's metrics Service is called for release "tuneguard").
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from tests.chart_tools import find_prometheus
from tests.cluster.polling import wait_for
from tests.cluster.processes import free_port, http_ok, terminate


def scrape_config(jobs: dict[str, list[tuple[str, dict]]], interval: str = "1s") -> dict:
    """jobs: scrape job name -> [(host:port, extra target labels)]."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": name, "honor_labels": True, "metrics_path": "/metrics",
             "static_configs": [{"targets": [t], "labels": labels} for t, labels in targets]}
            for name, targets in jobs.items()
        ],
    }


class Prometheus:
    """Scrapes `jobs` (static targets, see scrape_config), or runs a whole `config` as given (the one the
    Prometheus Operator generated; Kubernetes service discovery needs a Prometheus built with it, `exe`)."""

    def __init__(self, workdir: Path, jobs: dict[str, list[tuple[str, dict]]] | None = None, interval: str = "1s",
                 config: dict | None = None, exe: str | Path | None = None):
        assert (jobs is None) != (config is None), "static jobs or a whole config"
        self.workdir = Path(workdir)
        self.exe = exe
        self.config = config if config is not None else scrape_config(jobs, interval)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = self.workdir / "prometheus.log"

    def start(self, timeout: float = 60) -> "Prometheus":
        exe = self.exe or find_prometheus()
        assert exe, "prometheus not found: run scripts/ensure-prometheus.sh"
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.proc = subprocess.Popen(
            [str(exe), f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             "--storage.tsdb.retention.time=1d"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            return http_ok(f"{self.url}/-/ready")

        wait_for("prometheus /-/ready", ready, timeout, describe=self.log_tail)
        return self

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def api(self, path: str, **params) -> dict:
        q = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{q}", timeout=30) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Instant query; returns the result vector (a scalar comes back as one pseudo-series)."""
        data = self.api("query", query=expr, time=at)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def targets(self) -> list[dict]:
        return self.api("targets")["activeTargets"]

    def wait_for(self, expr: str, timeout: float = 60, what: str = "") -> list[dict]:
        """The first non-empty result of query(expr), polled every second; on timeout the error lists the targets."""
        def targets() -> str:
            return f"targets: {[(t['scrapeUrl'], t['health'], t.get('lastError')) for t in self.targets()]}"

        return wait_for(f"series for {expr} {what}".rstrip(), lambda: self.query(expr), timeout, interval=1,
                        describe=targets)


def env_with_repo_paths(root: Path) -> dict[str, str]:
    """A child process sees this checkout's packages first (as pytest does through pythonpath)."""
    paths = [str(root), str(root / "operator"), str(root / "trainer_image")]
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths + ([old] if old else []))}
