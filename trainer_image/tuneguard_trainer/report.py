"""DIR/report.json, the plots, and the table printed at the end of a run.

report.json (schema_version 1), written atomically:
  job {name, namespace}, method {type, settings}, model {uri, path, parameters}, dataset {...},
  triage {counts, seconds}, splits {train, known_probe, new_facts, unknown_probe, drift_prompts},
  stages [{name: triage|format|train, ...}] in the order they ran, base {figure: value} (the base model),
  reference {model: format-stage|base, figures} (what drops and drift are measured against),
  forgetting {absolute and relative drops of known accuracy}, final {figure: value, step},
  best {step, figures, path},
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


def forgetting(reference: dict, history: list[dict], final: dict) -> dict:
    """Known-fact forgetting two ways: the absolute drop from the reference model (points), and the
    paper's relative drop from the peak (Kaplan, Gekhman et al.: the best known accuracy seen, the reference
    included, minus the final one, over the peak)."""
    ref, fin = reference.get("known_accuracy"), final.get("known_accuracy")
    if ref is None or fin is None:
        return {"absolute_drop": None, "relative_drop_from_peak": None, "peak": None, "peak_step": None}
    peak, peak_step = ref, 0
    for h in history:
        v = h["figures"].get("known_accuracy")
        if v is not None and v > peak:
            peak, peak_step = v, h["step"]
    return {"absolute_drop": ref - fin, "relative_drop_from_peak": (peak - fin) / peak if peak else None,
            "peak": peak, "peak_step": peak_step}


def plot(out: Path, base: dict, history: list[dict], train_loss: list[dict], reference: Optional[dict] = None,
         format_loss: Optional[list[dict]] = None) -> list[str]:
    """figures.png (every figure over steps; base dashed, the format-stage reference dotted; the tuned curve
    starts at the reference) and loss.png (the format stage's loss before step 0). Returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    start = reference if reference is not None else base
    figs = [f for f in contract.FIGURES if any(h["figures"].get(f) is not None for h in history) or base.get(f) is not None]
    if figs:
        cols = 4
        rows = math.ceil(len(figs) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, f in zip(axes.flat, figs):
            pts = [(h["step"], h["figures"][f]) for h in history if h["figures"].get(f) is not None]
            if pts and start.get(f) is not None:
                pts = [(0, start[f])] + pts  # the curve starts where the fact stage starts (step 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label="tuned")
            if base.get(f) is not None:
                ax.axhline(base[f], linestyle="--", color="gray", label="base")
            if reference is not None and reference.get(f) is not None:
                ax.axhline(reference[f], linestyle=":", color="tab:green", label="after format stage")
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
        if format_loss:  # drawn at negative steps: the format stage ends where the fact stage's step 0 is
            n = len(format_loss)
            ax.plot([p["step"] - n for p in format_loss], [p["loss"] for p in format_loss], color="tab:green",
                    label="format stage")
        ax.plot([p["step"] for p in train_loss], [p["loss"] for p in train_loss], label="fact stage")
        ax.legend(fontsize=7)
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


def table(base: dict, tuned: dict, tuned_label: str = "tuned", reference: Optional[dict] = None) -> str:
    """Base vs tuned, one row per figure. With a ``reference`` (the format-stage snapshot) a column for it
    too, and the change is measured from it: the format it learned is not counted as forgetting."""
    w = max(len(f) for f in contract.FIGURES)
    ref_head = f"  {'format':>9}" if reference is not None else ""
    lines = [f"{'figure':<{w}}  {'base':>9}{ref_head}  {tuned_label:>9}  change", "-" * (w + 40 + len(ref_head))]
    start = reference if reference is not None else base
    for f in contract.FIGURES:
        if base.get(f) is None and tuned.get(f) is None:
            continue
        ref_col = f"  {_fmt(f, reference.get(f)):>9}" if reference is not None else ""
        lines.append(f"{f:<{w}}  {_fmt(f, base.get(f)):>9}{ref_col}  {_fmt(f, tuned.get(f)):>9}  "
                     f"{_delta(f, start.get(f), tuned.get(f))}")
    return "\n".join(lines)
