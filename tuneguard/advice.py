"""Which method to use on a job's data: one table of rules over what triage found, each citing its evidence.

The rules are read top to bottom. A caveat rule adds a note and the reading goes on; the first other rule
that holds decides the recommendation. Where a rule needs a measured figure it takes it from
tuneguard.evidence (Tuneguard's own table for the job's model, else the default one), so new measurements
change the advice, not this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from tuneguard import evidence
from tuneguard.evidence import MeasuredRow, MeasuredTable

# At most one fact in five is new: the job mostly teaches the answer format, which the format stage
# already does on the Known facts; by the Gekhman et al. fit the new fifth costs 3 points of their accuracy.
MOSTLY_KNOWN_SHARE = 0.8
# Two micro-batches of the default batch size (8): with fewer, one epoch of the format stage is a single
# optimizer step. The table's format stage, the only one measured, trained on 18 Known facts.
MIN_FORMAT_STAGE_KNOWN = 16
# One fact of the table's 150-fact known probe is 0.67 points: a smaller drop is below its resolution, so
# new facts per point lost are counted against at least this.
DROP_RESOLUTION = 0.67


@dataclass(frozen=True)
class DataFacts:
    """What the rules read: triage of the job's own training data and the job's intent."""

    slick: bool  # False: triage is disabled, the categories are a closed-book check, not SliCK
    examples: int
    highly_known: int = 0
    maybe_known: int = 0
    weakly_known: int = 0
    unknown: int = 0
    known_train: int = 0  # Known facts the format stage would train on (after the probe hold-out)
    format_stage: bool = True
    learn_new_facts: bool = True  # the new facts are the point of the job (unknownPolicy keep)

    @property
    def known_share(self) -> float:
        """HighlyKnown + MaybeKnown: the Known facts of Kaplan, Gekhman et al.'s format stage."""
        return (self.highly_known + self.maybe_known) / max(self.examples, 1)

    @property
    def unknown_share(self) -> float:
        return self.unknown / max(self.examples, 1)

    @property
    def new_share(self) -> float:
        """WeaklyKnown + Unknown: the facts the base model's greedy answer never got right."""
        return 1.0 - self.known_share


@dataclass(frozen=True)
class Rule:
    name: str
    when: Callable[[DataFacts], bool]
    reason: Callable[[DataFacts, Sequence[MeasuredRow]], str]
    row: Optional[Callable[[Sequence[MeasuredRow]], MeasuredRow]] = None  # the measured row it recommends
    caveat: bool = False
    policies: tuple[str, ...] = ("keep",)  # the unknownPolicy rows its reason reads


@dataclass
class Advice:
    rule: str
    reason: str
    row: Optional[MeasuredRow] = None  # None: the plan cannot judge
    notes: list[str] = field(default_factory=list)
    table: MeasuredTable = evidence.DEFAULT  # the table the reason's figures come from

    @property
    def method(self) -> Optional[str]:
        return self.row.method["type"] if self.row else None

    def settings(self) -> Optional[dict]:
        return self.row.settings() if self.row else None


# ------------------------------------------------------------------------------ evidence readers


def _keeping(rows: Sequence[MeasuredRow]) -> list[MeasuredRow]:
    """Rows that train on the Unknown facts' real answers."""
    return [r for r in rows if r.unknown_policy == "keep"]


def least_forgetting(rows: Sequence[MeasuredRow]) -> MeasuredRow:
    return min(_keeping(rows), key=lambda r: r.known_drop)


def new_facts_per_point(r: MeasuredRow) -> float:
    return r.new_fact_accuracy / max(r.known_drop, DROP_RESOLUTION)


def best_trade(rows: Sequence[MeasuredRow]) -> MeasuredRow:
    """The row that learned the most new facts per known point lost."""
    return max(_keeping(rows), key=new_facts_per_point)


def most_learning(rows: Sequence[MeasuredRow]) -> MeasuredRow:
    return max(_keeping(rows), key=lambda r: r.new_fact_accuracy)


def abstaining(rows: Sequence[MeasuredRow]) -> MeasuredRow:
    return next(r for r in rows if r.unknown_policy == "abstain")


def _drop(r: MeasuredRow) -> str:
    lo, hi = r.known_drop_ci95
    return f"{r.known_drop:.1f} points [{lo:.1f}, {hi:.1f}], {r.seeds} seed{'s' if r.seeds > 1 else ''}"


def _abstain_reason(f: DataFacts, rows: Sequence[MeasuredRow]) -> str:
    a = abstaining(rows)
    answered = next(r for r in _keeping(rows) if r.method == a.method)
    return (f"{f.unknown_share:.0%} of the facts are Unknown and need not be learned: relabelled to the abstention "
            f"text, {a.row} cut fabrication on held-out Unknown questions from {answered.fabrication_rate:.0f} % "
            f"({answered.row}) to {a.fabrication_rate:.0f} %; it also abstains on known facts ({_drop(a)} lost)")


def _learn_reason(f: DataFacts, rows: Sequence[MeasuredRow]) -> str:
    b, m = best_trade(rows), most_learning(rows)
    other = "" if b is m else f"; {m.row} learned {m.new_fact_accuracy:.0f} % for {m.known_drop:.1f}"
    return (f"{f.new_share:.0%} of the facts are new (WeaklyKnown or Unknown) and are to be learned: {b.row} "
            f"learned the most new facts per known point lost ({b.new_fact_accuracy:.0f} % for "
            f"{_drop(b)}{other})")


RULES: tuple[Rule, ...] = (
    Rule("triage-disabled", when=lambda f: not f.slick, policies=(),
         reason=lambda f, rows: "triage is disabled (spec.triage.enabled: false), so nothing says which facts the "
         "model already knows: the plan cannot judge; enable triage for advice"),
    Rule("too-few-known-for-format-stage", caveat=True, policies=(),
         when=lambda f: f.format_stage and f.known_train < MIN_FORMAT_STAGE_KNOWN,
         reason=lambda f, rows: f"only {f.known_train} Known training facts for the format stage (fewer than "
         f"{MIN_FORMAT_STAGE_KNOWN}, two batches of 8; the table's stage had 18): "
         + ("it will be skipped and the base model is the reference, so drops mix format and knowledge; add "
            "facts the model knows" if f.known_train == 0 else "the model may not learn the answer format, and "
            "drops are measured from that snapshot; add facts the model knows, or raise formatStage.epochs")),
    Rule("mostly-known", when=lambda f: f.known_share >= MOSTLY_KNOWN_SHARE, row=least_forgetting,
         reason=lambda f, rows: f"{f.known_share:.0%} of the facts are Known: the job mostly teaches a format, "
         f"so keep what the model knows: {least_forgetting(rows).row} lost the fewest known points "
         f"({_drop(least_forgetting(rows))})"),
    Rule("new-facts-not-needed", when=lambda f: not f.learn_new_facts, row=abstaining, reason=_abstain_reason,
         policies=("keep", "abstain")),
    Rule("new-facts-to-learn", when=lambda f: f.learn_new_facts, row=best_trade, reason=_learn_reason),
)


def advise(facts: DataFacts, table: MeasuredTable = evidence.DEFAULT, rules: Sequence[Rule] = RULES) -> Advice:
    notes = []
    for rule in rules:
        if not rule.when(facts):
            continue
        if rule.caveat:
            notes.append(rule.reason(facts, table.rows))
            continue
        cited = table
        missing = [p for p in rule.policies if not table.has_policy(p)]
        if missing:  # e.g. no abstain row measured on this model: cite the default table's, and say so
            cited = evidence.DEFAULT
            notes.append(f"{table.model}'s table has no unknownPolicy {'/'.join(missing)} row: the figures "
                         f"cited are {cited.model}'s")
        rows = cited.rows
        return Advice(rule=rule.name, reason=rule.reason(facts, rows), row=rule.row(rows) if rule.row else None,
                      notes=notes, table=cited)
    raise AssertionError("the last rules cover every case")  # new-facts-to-learn / -not-needed
