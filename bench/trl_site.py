"""TRL (and `datasets`) for the speed benchmark without touching the trainer's virtualenv.

The packages TRL needs that the venv lacks are installed once with
``pip install --target <cache>/bench-site/py<XY> --no-deps`` (so torch and transformers are never
re-installed or upgraded), from local wheel directories first (``$TUNEGUARD_WHEEL_DIRS``, ``.whl/bench-py<XY>``;
see bench/fetch_wheels.sh) and from the package index otherwise (``TUNEGUARD_BENCH_NO_INDEX=1`` forbids
that). The directory is appended to ``sys.path`` AFTER the venv's site-packages, so whatever the venv has
wins.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from .common import REPO, cache_dir

TRL_VERSION = "1.16.0"
# import name -> pip requirement; installed only when the import name is not found.
NEEDED = {
    "trl": f"trl=={TRL_VERSION}",
    "datasets": "datasets==5.2.0",
    "dill": "dill==0.4.1",
    "multiprocess": "multiprocess==0.70.19",
    "pandas": "pandas==3.0.3",
    "tzdata": "tzdata==2026.6",
    "six": "six==1.17.0",
    "pyarrow": "pyarrow==24.0.0",
    "xxhash": "xxhash",
    "accelerate": "accelerate==1.15.0",
}


def site_dir() -> Path:
    return cache_dir() / "bench-site" / f"py{sys.version_info.major}{sys.version_info.minor}"


def _wheel_dirs() -> list[Path]:
    dirs = []
    for var in ("TUNEGUARD_WHEEL_DIRS", "PIP_FIND_LINKS"):
        for d in os.environ.get(var, "").replace(" ", os.pathsep).split(os.pathsep):
            if d and "://" not in d and Path(d).is_dir():
                dirs.append(Path(d))
                dirs += [p for p in Path(d).glob("bench-py*") if p.is_dir()]
    local = REPO / ".whl" / f"bench-py{sys.version_info.major}{sys.version_info.minor}"
    if local.is_dir():
        dirs.append(local)
    return dirs


def ensure_trl() -> dict:
    """Make ``import trl`` work; returns {version, site, installed: [...]}. Raises RuntimeError with the
    reason when it cannot (the caller records it)."""
    site = site_dir()
    if str(site) not in sys.path:
        sys.path.append(str(site))  # after the venv's site-packages
    importlib.invalidate_caches()
    missing = [req for mod, req in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if missing:
        site.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
               "--only-binary=:all:", "-c", str(REPO / "constraints.txt")]
        for d in _wheel_dirs():
            cmd += ["--find-links", str(d)]
        if os.environ.get("TUNEGUARD_BENCH_NO_INDEX") == "1":
            cmd.append("--no-index")
        cmd += missing
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"could not install {missing} into {site}: {res.stderr.strip()[-800:]}")
        importlib.invalidate_caches()
    try:
        trl = importlib.import_module("trl")
    except Exception as e:  # an incompatibility with the pinned transformers shows up here
        raise RuntimeError(f"import trl failed: {type(e).__name__}: {e}") from e
    return {"version": getattr(trl, "__version__", "?"), "site": str(site), "installed": missing}
