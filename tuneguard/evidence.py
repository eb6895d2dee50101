"""Tuneguard's own measurements that the plan's advice (tuneguard.advice) cites: the headline rows of the
papers' table at CPU scale.

They live here, not only in docs/results/, because the trainer image has no docs/ and plans every run
before training; tests/unit/test_advice.py checks every figure against SOURCE, so the two cannot drift.
Figures are the mean over seeds at the last step, in points (percent), with the table's 95 % bootstrap
interval (seeds and probe facts resampled).
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "docs/results/hallucination-table-cpu.json"
# finished runs under runs/bench/hallucination-cpu/ are reused, so later invocations complete the table
COMMAND = "python bench/hallucination_table.py --device cpu --seeds 3 --sweep --jobs 2"
SCOPE = "measured on SmolLM2-135M-Instruct, CPU scale, mix half Unknown"
STEPS = 48  # fact-stage steps of every row, after a format stage on the Known training facts


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


ROWS: tuple[MeasuredRow, ...] = (
    MeasuredRow("sft", {"type": "sft"}, "keep", 3, 21.8, (16.9, 26.9), 92.0, (84.8, 97.1), 97.7, 0.0),
    MeasuredRow("self-distill", {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5}},
                "keep", 3, 21.1, (17.3, 24.9), 61.6, (52.2, 70.3), 98.4, 0.0),
    MeasuredRow("self-distill-base-teacher",
                {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5, "teacher": "base"}},
                "keep", 3, 24.7, (18.9, 30.4), 68.8, (57.2, 79.7), 95.3, 0.0),
    MeasuredRow("freeze", {"type": "freeze", "freeze": {"preset": "attention-only"}}, "keep", 3, 4.0, (2.2, 6.0),
                54.3, (44.2, 64.5), 93.0, 0.0),
    MeasuredRow("sft-abstain", {"type": "sft"}, "abstain", 3, 41.1, (34.2, 48.2), 92.9, (81.0, 100.0), 21.2, 78.0),
)


def row(name: str) -> MeasuredRow:
    return next(r for r in ROWS if r.row == name)


# Gekhman et al. 2024, in-distribution (PaLM 2-M, EntityQuestions, exact match): test accuracy in points as a
# linear function of the shares of Known (HighlyKnown, MaybeKnown, WeaklyKnown) and Unknown fine-tuning
# examples the model fits, R^2 0.86. Their model and setting, not ours.
GEKHMAN_FIT = {"intercept": 36.9, "known": 7.3, "unknown": -8.3, "r2": 0.86}
GEKHMAN_FIT_TEXT = "Acc = 36.9 + 7.3 * share_known - 8.3 * share_unknown (R^2 0.86)"


def gekhman_accuracy(share_known: float, share_unknown: float) -> float:
    """The fit's test accuracy (points, their setting) for these shares of the fine-tuning examples."""
    f = GEKHMAN_FIT
    return f["intercept"] + f["known"] * share_known + f["unknown"] * share_unknown
