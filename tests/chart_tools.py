"""Finding and running helm and promtool for the chart and Prometheus tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tuneguard"


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEGUARD_CACHE", Path.home() / ".cache" / "tuneguard"))


def find_helm() -> str | None:
    """$TUNEGUARD_HELM, the binary scripts/build-control-plane.sh cached, or helm on PATH."""
    if os.environ.get("TUNEGUARD_HELM"):
        return os.environ["TUNEGUARD_HELM"]
    cached = sorted((cache_dir() / "bin").glob("helm-*/helm"))
    if cached:
        return str(cached[-1])
    return shutil.which("helm")


def find_promtool() -> str | None:
    return shutil.which("promtool")


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


HELM_MISSING = ("helm not found: run scripts/build-control-plane.sh helm (caches it under "
                "~/.cache/tuneguard/bin), or put helm on PATH, or set TUNEGUARD_HELM")
PROMTOOL_MISSING = "promtool not found: run scripts/ensure-prometheus.sh (installs Debian's prometheus package)"


def helm(*args: str, check: bool = True, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    exe = find_helm()
    assert exe, HELM_MISSING
    home = cache_dir() / "helm-home"
    e = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
         "HELM_DATA_HOME": str(home / "data"), **(env or {})}
    p = subprocess.run([exe, *args], capture_output=True, text=True, env=e, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def template(*args: str, release: str = "tuneguard", namespace: str = "tuneguard-system") -> list[dict]:
    """`helm template` the chart; returns the rendered objects (CRDs included)."""
    out = helm("template", release, str(CHART), "--namespace", namespace, "--include-crds", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]
