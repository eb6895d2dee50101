"""Hallucination, drift and robustness budgets, checked at every evaluation.

The budgets are re-read from the config file at each evaluation: in a cluster that file is the
mounted ConfigMap, which the operator rewrites when someone edits spec.guardrails of a running job
(the only part of the spec that may change under a running job). A file that cannot be read or
parsed at that moment keeps the previous budgets (logged), so a half-written update never stops a run.

- hallucination: ``hallucination_rate(tuned) - hallucination_rate(base) > maxHallucinationIncrease``
- drift: ``drift_kl(tuned) > maxDriftKL``
- robustness: at some shift, ``gap(tuned) - gap(reference) > maxRobustnessGapIncrease``, where gap is the known
  probe's accuracy asked unshifted minus asked shifted (shifts.py)

Actions: ``warn`` records the breach and continues; ``stop`` ends training (the best checkpoint within
budget stays the delivered model); ``rollback`` restores the best checkpoint within budget (the base
model when no evaluation was within budget) into the live model and ends training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from tuneguard import api

log = logging.getLogger("tuneguard.trainer")


@dataclass
class Breach:
    guardrail: str  # "hallucination" | "drift" | "robustness"
    value: float
    limit: float
    shift: str = ""  # robustness: the shift whose gap grew most

    def __str__(self) -> str:
        if self.guardrail == "hallucination":
            return f"hallucination rate rose by {self.value:.3f} (> {self.limit:.3f})"
        if self.guardrail == "robustness":
            return f"robustness gap under {self.shift} rose by {self.value:.3f} (> {self.limit:.3f})"
        return f"drift KL {self.value:.4f} (> {self.limit:.4f})"


def _gap_rise(shifts: dict, ref_shifts: dict) -> tuple[str, float] | None:
    """The shift whose known-probe gap rose most over the reference's, and by how much."""
    rises = []
    for shift, probes in (shifts or {}).items():
        g, g0 = (probes.get("known") or {}).get("gap"), ((ref_shifts or {}).get(shift, {}).get("known") or {}).get("gap")
        if g is not None and g0 is not None:
            rises.append((shift, float(g) - float(g0)))
    return max(rises, key=lambda r: r[1]) if rises else None


def check(figures: dict, base: dict, spec: api.GuardrailSpec, shifts: dict | None = None,
          ref_shifts: dict | None = None) -> list[Breach]:
    """The budgets `figures` breaks, against `base` (the reference model's figures); `shifts`/`ref_shifts`: the
    shift tests of the tuned and the reference model (evaluation.Evaluator.last_shifts)."""
    out: list[Breach] = []
    h, h0 = figures.get("hallucination_rate"), base.get("hallucination_rate")
    if spec.max_hallucination_increase is not None and h is not None and h0 is not None:
        inc = float(h) - float(h0)
        if inc > spec.max_hallucination_increase + 1e-12:
            out.append(Breach("hallucination", inc, spec.max_hallucination_increase))
    kl = figures.get("drift_kl")
    if spec.max_drift_kl is not None and kl is not None and float(kl) > spec.max_drift_kl:
        out.append(Breach("drift", float(kl), spec.max_drift_kl))
    rise = _gap_rise(shifts, ref_shifts) if spec.max_robustness_gap_increase is not None else None
    if rise is not None and rise[1] > spec.max_robustness_gap_increase + 1e-12:
        out.append(Breach("robustness", rise[1], spec.max_robustness_gap_increase, shift=rise[0]))
    return out


class GuardrailSource:
    """The current budgets, re-read from the job file on each call to `current()`."""

    def __init__(self, initial: api.GuardrailSpec, path: Optional[Path]):
        self.spec = initial
        self.path = path
        self._mtime: Optional[float] = None

    def current(self) -> api.GuardrailSpec:
        if self.path is None:
            return self.spec
        try:
            doc = yaml.safe_load(Path(self.path).read_text())
            raw = ((doc or {}).get("spec") or {}).get("guardrails") or {}
            new = api.GuardrailSpec.model_validate(raw)
        except Exception as e:  # keep the last good budgets
            log.warning("guardrails: could not re-read %s (%s); keeping the previous budgets", self.path, e)
            return self.spec
        if new != self.spec:
            log.info("guardrails updated from %s: %s", self.path, new.wire())
            self.spec = new
        return self.spec
