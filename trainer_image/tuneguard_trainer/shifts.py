"""Shift tests: the known probe and the new facts asked in forms training never showed.

A model asked its probes in the exact form it was trained on can look fine and fail on the same facts asked
another way. Each shift rewrites a probe question deterministically (seeded by the job's seed and the fact's
id, so every evaluation, and the base and the tuned model, see the same shifted questions):

* ``paraphrase``: one of the fact's other wordings (its relation's other templates; facts without any are left
  out of this shift);
* ``noise``: one seeded perturbation per question: a typo (two adjacent letters of a word swapped), lower case,
  or extra words around it;
* ``format``: the other prompt format: zero-shot when the probe is asked few-shot, few-shot when zero-shot.

The robustness gap of a probe at a shift is its accuracy asked unshifted (as the probe asks it, the form the
evaluation uses everywhere) minus its accuracy asked shifted, on the same facts. The evaluator (evaluation.py) asks
the shifted questions in the same pass as the rest. (Training itself is zero-shot: for the new facts the format
shift asks them in the very form they were trained in, and its gap can be negative.)
"""

from __future__ import annotations

import dataclasses
import random
import re
from typing import Optional

from .data import QAExample

SHIFTS = ("paraphrase", "noise", "format")
FILLERS = (("Quick question: ", ""), ("", " Please answer briefly."), ("Hi! ", " Thanks."), ("I wonder, ", ""))


def _rng(seed: int, ex: QAExample, shift: str) -> random.Random:
    return random.Random(f"{seed}:{shift}:{ex.id}")


def paraphrase(ex: QAExample, seed: int) -> Optional[QAExample]:
    others = [p for p in ex.paraphrases if p.strip() and p != ex.question]
    if not others:
        return None
    return dataclasses.replace(ex, question=_rng(seed, ex, "paraphrase").choice(others))


def _typo(question: str, rng: random.Random) -> Optional[str]:
    """Two adjacent, different letters inside a word swapped (a word's first and last letters stay)."""
    spots = [i for m in re.finditer(r"[A-Za-z]{4,}", question) for i in range(m.start() + 1, m.end() - 2)
             if question[i] != question[i + 1]]
    if not spots:
        return None
    i = rng.choice(spots)
    return question[:i] + question[i + 1] + question[i] + question[i + 2:]


def noise(ex: QAExample, seed: int) -> QAExample:
    rng = _rng(seed, ex, "noise")
    kind = rng.choice(("typo", "lower", "extra"))
    q = ex.question
    if kind == "typo":
        q = _typo(q, rng) or q.lower()
    elif kind == "lower":
        q = q.lower()
    else:
        before, after = rng.choice(FILLERS)
        q = f"{before}{q[0].lower() + q[1:] if before else q}{after}"
    return dataclasses.replace(ex, question=q)


def shifted(shift: str, ex: QAExample, seed: int) -> Optional[QAExample]:
    """The example as asked under `shift` (None: the shift does not apply to it). `format` keeps the question:
    the evaluator changes the prompt instead."""
    if shift == "paraphrase":
        return paraphrase(ex, seed)
    if shift == "noise":
        return noise(ex, seed)
    if shift == "format":
        return ex
    raise ValueError(f"unknown shift {shift!r} (known: {', '.join(SHIFTS)})")


def gap(unshifted: Optional[float], shifted_accuracy: Optional[float]) -> Optional[float]:
    """Accuracy asked unshifted minus asked shifted (positive: the shift costs accuracy)."""
    if unshifted is None or shifted_accuracy is None:
        return None
    return unshifted - shifted_accuracy
