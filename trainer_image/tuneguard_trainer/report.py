"""DIR/report.json, the plots, and the table printed at the end of a run.

report.json (schema_version 1), written atomically:
  job {name, namespace}, method {type, settings}, model {uri, path, parameters}, dataset {...},
  triage {counts, seconds}, splits {train, known_probe, new_facts, unknown_probe, drift_prompts},
  base {figure: value}, final {figure: value, step}, best {step, figures, path},
  history [{step, epoch, figures, train_loss, guardrail_breaches}], train_loss [{step, loss, lr}],
  throughput {tokens, tokens_per_second, seconds, step_seconds_mean, steps},
  guardrail {budgets, breaches, action, outcome}, frozen_weights {...} (freeze only),
  early_stopping {...}, deepspeed {zero_stage, precision, world_size}, timings {phase: seconds},
  outputs {best_model, plots}, resumed_from, finished_at.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from tuneguard import contract

from .checkpoints import atomic_write_text

SCHEMA_VERSION = 1

# Figures where higher is better; the others are better lower.
HIGHER_IS_BETTER = {"known_accuracy", "new_fact_accuracy", "abstention_rate"}
PERCENT = {"known_accuracy", "hallucination_rate", "new_fact_accuracy", "abstention_rate", "fabrication_rate"}


def write_report(out: Path, report: dict) -> Path:
    report = {"schema_version": SCHEMA_VERSION, **report}
    path = Path(out) / "report.json"
    atomic_write_text(path, json.dumps(_clean(report), indent=2, default=str) + "\n")
    return path


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def plot(out: Path, base: dict, history: list[dict], train_loss: list[dict]) -> list[str]:
    """figures.png (every figure over steps, base dashed) and loss.png. Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figs = [f for f in contract.FIGURES if any(h["figures"].get(f) is not None for h in history) or base.get(f) is not None]
    if figs:
        cols = 4
        rows = math.ceil(len(figs) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, f in zip(axes.flat, figs):
            pts = [(h["step"], h["figures"][f]) for h in history if h["figures"].get(f) is not None]
            if pts and base.get(f) is not None:
                pts = [(0, base[f])] + pts  # the curve starts at the base model (step 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="tuned")
            if base.get(f) is not None:
                ax.axhline(base[f], linestyle="--", color="gray", label="base")
            ax.set_title(f)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(figs):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(Path(out) / "figures.png", dpi=80)
        plt.close(fig)
        written.append("figures.png")
    if train_loss:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([p["step"] for p in train_loss], [p["loss"] for p in train_loss])
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_title("training loss")
        fig.tight_layout()
        fig.savefig(Path(out) / "loss.png", dpi=80)
        plt.close(fig)
        written.append("loss.png")
    return written


def _fmt(f: str, v: Optional[float]) -> str:
    if v is None:
        return "-"
    if f in PERCENT:
        return f"{100 * v:6.1f}%"
    return f"{v:8.4f}"


def _delta(f: str, b: Optional[float], t: Optional[float]) -> str:
    if b is None or t is None:
        return ""
    d = t - b
    s = f"{100 * d:+6.1f} pts" if f in PERCENT else f"{d:+9.4f}"
    if abs(d) < 1e-12:
        return s
    good = (d > 0) == (f in HIGHER_IS_BETTER)
    if f in ("eval_loss",):
        good = d < 0
    return s + ("  better" if good else "  worse")


def table(base: dict, tuned: dict, tuned_label: str = "tuned") -> str:
    w = max(len(f) for f in contract.FIGURES)
    lines = [f"{'figure':<{w}}  {'base':>9}  {tuned_label:>9}  change", "-" * (w + 40)]
    for f in contract.FIGURES:
        if base.get(f) is None and tuned.get(f) is None:
            continue
        lines.append(f"{f:<{w}}  {_fmt(f, base.get(f)):>9}  {_fmt(f, tuned.get(f)):>9}  {_delta(f, base.get(f), tuned.get(f))}")
    return "\n".join(lines)
