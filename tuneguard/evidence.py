"""Tuneguard's own measurements that the plan's advice (tuneguard.advice) cites: the headline rows of the
papers' table at CPU scale, one table per bundled model that has one.

They live here, not only in docs/results/, because the trainer image has no docs/ and plans every run
before training; tests/unit/test_advice.py checks every figure against its table's source, so the two
cannot drift.
Figures are the mean over seeds at the last step, in points (percent), with the table's 95 % bootstrap
interval (seeds and probe facts resampled).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MeasuredRow:
    row: str  # the table's row name
    method: dict  # the FineTuneJob method block the row ran
    unknown_policy: str  # its triage.unknownPolicy
    seeds: int
    known_drop: float  # points of held-out known-fact accuracy lost from the format-stage snapshot
    known_drop_ci95: tuple[float, float]
    new_fact_accuracy: float  # percent of the trained new facts answered correctly
    new_fact_accuracy_ci95: tuple[float, float]
    fabrication_rate: float  # percent of held-out Unknown questions answered with an invented fact
    abstention_rate: float  # percent of held-out Unknown questions answered "I don't know"

    def settings(self) -> dict:
        """The spec fields to set to run this row's method (manifest spelling)."""
        return {"method": self.method, "triage": {"unknownPolicy": self.unknown_policy}}


@dataclass(frozen=True)
class MeasuredTable:
    """One model's table: its rows and how to reproduce them."""

    model: str  # the spec.model.uri it was measured on
    source: str  # the results file the rows are copied from
    command: str  # finished runs under runs/bench/ are reused, so later invocations complete the table
    scope: str
    steps: int  # fact-stage steps of every row, after a format stage on the Known training facts
    rows: tuple[MeasuredRow, ...]

    def row(self, name: str) -> MeasuredRow:
        return next(r for r in self.rows if r.row == name)

    def has_policy(self, policy: str) -> bool:
        return any(r.unknown_policy == policy for r in self.rows)


SFT = {"type": "sft"}
SELF_DISTILL = {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5}}
SELF_DISTILL_BASE = {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5, "teacher": "base"}}
FREEZE = {"type": "freeze", "freeze": {"preset": "attention-only"}}

SMOLLM2 = MeasuredTable(
    model="bundled://smollm2-135m-instruct", source="docs/results/hallucination-table-cpu.json",
    command="python bench/hallucination_table.py --device cpu --seeds 3 --sweep --jobs 2",
    scope="measured on SmolLM2-135M-Instruct, CPU scale, mix half Unknown", steps=48, rows=(
        MeasuredRow("sft", SFT, "keep", 3, 21.8, (16.9, 26.9), 92.0, (84.8, 97.1), 97.7, 0.0),
        MeasuredRow("self-distill", SELF_DISTILL, "keep", 3, 21.1, (17.3, 24.9), 61.6, (52.2, 70.3), 98.4, 0.0),
        MeasuredRow("self-distill-base-teacher", SELF_DISTILL_BASE, "keep", 3, 24.7, (18.9, 30.4), 68.8, (57.2, 79.7),
                    95.3, 0.0),
        MeasuredRow("freeze", FREEZE, "keep", 3, 4.0, (2.2, 6.0), 54.3, (44.2, 64.5), 93.0, 0.0),
        MeasuredRow("sft-abstain", SFT, "abstain", 3, 41.1, (34.2, 48.2), 92.9, (81.0, 100.0), 21.2, 78.0),
    ))

GEMMA3 = MeasuredTable(
    model="bundled://gemma3-270m", source="docs/results/hallucination-table-cpu-gemma.json",
    command="python bench/hallucination_table.py --device cpu --model bundled://gemma3-270m --tag cpu-gemma",
    scope="measured on Gemma-3-270M, CPU scale, mix half Unknown", steps=48, rows=(
        MeasuredRow("sft", SFT, "keep", 3, 62.9, (53.8, 71.6), 50.5, (30.6, 74.8), 97.9, 0.0),
        MeasuredRow("self-distill", SELF_DISTILL, "keep", 3, 44.9, (39.8, 50.4), 25.2, (14.4, 36.0), 96.5, 0.0),
        MeasuredRow("freeze", FREEZE, "keep", 3, 30.4, (23.1, 38.7), 75.7, (66.7, 83.8), 96.5, 0.0),
        MeasuredRow("self-distill-base-teacher", SELF_DISTILL_BASE, "keep", 3, 83.8, (78.7, 88.2), 26.1, (10.8, 40.5), 99.3,
                    0.0),
    ))


TABLES = (SMOLLM2, GEMMA3)
DEFAULT = SMOLLM2  # for a model without a table of its own: the smaller model's, which has every row


def table_for(model_uri: str) -> MeasuredTable:
    """The table measured on this model, else DEFAULT."""
    return next((t for t in TABLES if t.model == model_uri), DEFAULT)


# Gekhman et al. 2024, in-distribution (PaLM 2-M, EntityQuestions, exact match): test accuracy in points as a
# linear function of the shares of Known (HighlyKnown, MaybeKnown, WeaklyKnown) and Unknown fine-tuning
# examples the model fits, R^2 0.86. Their model and setting, not ours.
GEKHMAN_FIT = {"intercept": 36.9, "known": 7.3, "unknown": -8.3, "r2": 0.86}
GEKHMAN_FIT_TEXT = "Acc = 36.9 + 7.3 * share_known - 8.3 * share_unknown (R^2 0.86)"


def gekhman_accuracy(share_known: float, share_unknown: float) -> float:
    """The fit's test accuracy (points, their setting) for these shares of the fine-tuning examples."""
    f = GEKHMAN_FIT
    return f["intercept"] + f["known"] * share_known + f["unknown"] * share_unknown
