"""Small pure helpers shared by the benchmark scripts (statistics, tables, paths). No torch here."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "results"


def out_dir(arg: Optional[str]) -> Path:
    """--out, else $OUT (the GPU box's result folder), else docs/results/."""
    p = Path(arg) if arg else (Path(os.environ["OUT"]) if os.environ.get("OUT") else DEFAULT_OUT)
    p.mkdir(parents=True, exist_ok=True)
    return p


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEGUARD_CACHE", str(Path.home() / ".cache" / "tuneguard"))).expanduser()


def mean_std(xs: Sequence[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (0 for one value) of the non-None values."""
    v = [float(x) for x in xs if x is not None]
    if not v:
        return None, None
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def percentile(xs: Sequence[float], q: float) -> Optional[float]:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence; None if empty."""
    v = sorted(float(x) for x in xs)
    if not v:
        return None
    if len(v) == 1:
        return v[0]
    pos = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def median(xs: Sequence[float]) -> Optional[float]:
    return percentile(xs, 50.0)


def fmt_pm(mean: Optional[float], std: Optional[float], scale: float = 100.0, digits: int = 1) -> str:
    """'41.2 ± 3.0' (values scaled, e.g. to percent); '-' when missing."""
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f} ± {(std or 0.0) * scale:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("-" if c is None else str(c) for c in r) + " |")
    return "\n".join(lines)


def yes_no(ok: Optional[bool]) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def machine_info(device: str) -> dict:
    info = {"device": device, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_1m": round(os.getloadavg()[0], 2),
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import torch

        info["torch"] = torch.__version__
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        import transformers

        info["transformers"] = transformers.__version__
    except Exception:  # pragma: no cover - operator_scale runs without torch
        pass
    return info


def write_text(path: Path, text: str) -> Path:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_result(out: Path, name: str, result: dict, md: str, echo: bool = True) -> Path:
    """A benchmark's <name>.json (the figures) and <name>.md (their summary); prints the summary."""
    write_text(out / f"{name}.md", md)
    path = write_json(out / f"{name}.json", result)
    if echo:
        print("\n" + md, flush=True)
    return path


def model_bench_parser(doc: str, quick_help: Optional[str] = None) -> argparse.ArgumentParser:
    """The options every model benchmark shares (--quick only for a script that has a smoke mode)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    if quick_help:
        ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", help="results directory (default $OUT or docs/results/)")
    ap.add_argument("--model", default="bundled://smollm2-135m-instruct")
    return ap


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def cpu_threads(device: str) -> None:
    """On CPU, the trainer's own thread choice for a shared machine (tuneguard_trainer.local.choose_threads:
    as many torch threads as cores are idle, at least one; OMP_NUM_THREADS wins)."""
    if device != "cpu":
        return
    try:
        from tuneguard_trainer.local import choose_threads
    except ImportError:  # an older trainer
        return
    t = choose_threads()
    if t is not None:
        import torch

        torch.set_num_threads(t)
        # so that libraries that look at it (accelerate sets 2 threads when it is unset) keep this choice
        os.environ["OMP_NUM_THREADS"] = str(t)
        print(f"torch threads: {t} (load average {os.getloadavg()[0]:.1f})", flush=True)
