"""Leakage between probes and training data, and duplicates inside the training data.

A probe question (known probe, unknown probe, and every paraphrase a probe example carries) *leaks*
when a training question is

* an **exact** duplicate of it after normalisation (Unicode NFKC, case folding, punctuation and
  whitespace stripped, then the scoring's own ``prompts.normalize_answer``), whatever the answers; or
* a **near** duplicate: IDF-weighted Jaccard similarity of the two normalised token sets at least
  ``threshold`` *and* the two share an accepted answer (answers compared with ``normalize_answer``,
  as the evaluation scores them).

Weighted, not plain, Jaccard: in templated QA most tokens are the template's ("what is the capital of"),
so plain Jaccard rates "What is the capital of Peru?" and "...of Chad?" alike and a real paraphrase
("Which city is the capital of Peru?") lower than both. Each token weighs idf^2, idf = log(1 + N/df) over
all compared questions, so the subject's rare tokens decide. Measured on the bundled facts (3,607 facts,
every paraphrase against every question): at 0.8, 62% of the paraphrases match their own fact's question
and 28 of 10,821 questions match another fact's question with a shared answer ("Kowloon" and "Kowloon
City"); plain idf weights catch 53% (24), unweighted Jaccard almost none of these paraphrases.

Search: an inverted index of the training questions' tokens, queried with each question's *prefix
filter* (its heaviest tokens, just enough that a pair sharing none of them cannot reach the threshold),
then exact similarity on the candidates. Exact (no false negatives, unlike MinHash/LSH), plain Python,
and the candidates stay few because the prefix holds the rare tokens (bench/leakage_speed.py: 100k
training questions).

Everything here is a pure function of the examples; nothing imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol, Sequence

from .prompts import normalize_answer

PROBE_SETS = ("known_probe", "unknown_probe")
POLICIES = ("refuse", "drop", "warn")


class Example(Protocol):  # data.QAExample satisfies it
    id: str
    question: str
    answers: list[str]
    paraphrases: list[str]


_UNICODE_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)


def normalize_question(text: str) -> str:
    """NFKC, case-folded, punctuation (any Unicode P*/S* symbol) and extra whitespace removed, then the
    scoring's normaliser (articles dropped): what two questions must share to be exact duplicates."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _UNICODE_PUNCT.sub(" ", text).replace("_", " ")
    return normalize_answer(text)


@dataclass(frozen=True)
class Pair:
    """One leak (probe text ~ training question) or one training duplicate (later ~ earlier example)."""

    kind: str  # "exact" | "near"
    similarity: float
    probe_set: str  # known_probe | unknown_probe | train
    probe_id: str
    probe_text: str
    train_id: str
    train_text: str

    def line(self) -> str:
        sim = "exact" if self.kind == "exact" else f"near {self.similarity:.2f}"
        return (f"{self.probe_set} {self.probe_id} {self.probe_text!r} ~ train {self.train_id} "
                f"{self.train_text!r} ({sim})")


@dataclass
class LeakageReport:
    threshold: float
    pairs: list[Pair] = field(default_factory=list)  # probe ~ training
    train_pairs: list[Pair] = field(default_factory=list)  # training ~ earlier training
    leaked: dict[str, list[str]] = field(default_factory=dict)  # probe set -> leaked example ids (sorted)
    seconds: float = 0.0

    def leaked_ids(self, kind: Optional[str] = None) -> set[tuple[str, str]]:
        """(probe set, id) of the leaked probe examples; kind exact: those with an exact pair; near: those
        whose pairs are all near ones."""
        exact = {(p.probe_set, p.probe_id) for p in self.pairs if p.kind == "exact"}
        every = {(p.probe_set, p.probe_id) for p in self.pairs}
        return every if kind is None else exact if kind == "exact" else every - exact

    def counts(self, dropped: int = 0) -> dict:
        """api.LeakageCounts fields: leaked probe examples (exact; near only), training examples that
        duplicate an earlier one, probe examples dropped."""
        return {"exact": len(self.leaked_ids("exact")), "near": len(self.leaked_ids("near")),
                "train_duplicates": len({p.probe_id for p in self.train_pairs}), "dropped": int(dropped)}

    def describe(self, limit: int = 10) -> str:
        c = self.counts()
        head = (f"{c['exact'] + c['near']} probe example(s) leak from the training data ({c['exact']} exact, "
                f"{c['near']} near duplicates with a shared answer, similarity >= {self.threshold:g}; "
                f"{len(self.pairs)} pair(s))")
        lines = [head] + [f"  {p.line()}" for p in self.pairs[:limit]]
        if len(self.pairs) > limit:
            lines.append(f"  ... and {len(self.pairs) - limit} more pair(s)")
        return "\n".join(lines)

    def to_dict(self, dropped: int = 0, limit: int = 20) -> dict:
        """What report.json records: counts, the first ``limit`` pairs of each kind, settings, time."""
        return {"counts": self.counts(dropped), "threshold": self.threshold, "pairs": len(self.pairs),
                "first_pairs": [dataclasses.asdict(p) for p in self.pairs[:limit]],
                "train_duplicate_pairs": len(self.train_pairs),
                "first_train_duplicates": [dataclasses.asdict(p) for p in self.train_pairs[:limit]],
                "seconds": round(self.seconds, 3)}


# ------------------------------------------------------------------------------------------- index


@dataclass
class _Doc:
    id: str
    text: str
    norm: str
    tokens: frozenset
    answers: frozenset


def _doc(ex_id: str, text: str, answers: Sequence[str]) -> _Doc:
    norm = normalize_question(text)
    return _Doc(ex_id, text, norm, frozenset(norm.split()), frozenset(normalize_answer(a) for a in answers))


def _weights(docs: Sequence[_Doc]) -> dict[str, float]:
    df: dict[str, int] = defaultdict(int)
    for d in docs:
        for t in d.tokens:
            df[t] += 1
    n = len(docs)
    return {t: math.log(1.0 + n / c) ** 2 for t, c in df.items()}


def similarity(a: frozenset, b: frozenset, w: Mapping[str, float]) -> float:
    """Weighted Jaccard of two token sets: weight of the intersection over weight of the union (w: _weights)."""
    inter = sum(w[t] for t in a & b)
    if inter == 0.0:
        return 0.0
    return inter / sum(w[t] for t in a | b)


class _Index:
    """Training questions by exact normal form and by token (inverted index)."""

    def __init__(self, docs: Sequence[_Doc], w: Mapping[str, float]):
        self.docs, self.w = docs, w
        self.by_norm: dict[str, list[int]] = defaultdict(list)
        self.by_token: dict[str, list[int]] = defaultdict(list)
        for i, d in enumerate(docs):
            self.by_norm[d.norm].append(i)
            for t in d.tokens:
                self.by_token[t].append(i)

    def prefix(self, tokens: frozenset, threshold: float) -> list[str]:
        """The heaviest tokens, until the rest weighs less than threshold x the whole: a document sharing
        none of them has similarity < threshold (intersection <= rest < threshold x |q| <= threshold x union)."""
        order = sorted(tokens, key=lambda t: (-self.w[t], t))
        total = sum(self.w[t] for t in order)
        rest, out = total, []
        for t in order:
            if rest < threshold * total:
                break
            out.append(t)
            rest -= self.w[t]
        return out

    def matches(self, q: _Doc, threshold: float, below: Optional[int] = None) -> list[tuple[int, str, float]]:
        """(doc index, kind, similarity) of the training questions ``q`` duplicates; with ``below``, only
        documents with a smaller index (training duplicates: each later one against the earlier ones)."""
        out: list[tuple[int, str, float]] = []
        exact = {i for i in self.by_norm.get(q.norm, ()) if below is None or i < below}
        out.extend((i, "exact", 1.0) for i in sorted(exact))
        if not q.answers:
            return out
        seen = set(exact)
        for t in self.prefix(q.tokens, threshold):
            for i in self.by_token.get(t, ()):
                if i in seen or (below is not None and i >= below):
                    continue
                seen.add(i)
                d = self.docs[i]
                if q.answers & d.answers:
                    s = similarity(q.tokens, d.tokens, self.w)
                    if s >= threshold:
                        out.append((i, "near", s))
        return out


def find_leaks(train: Sequence[Example], probes: Mapping[str, Sequence[Example]], threshold: float = 0.8,
               check_train: bool = True) -> LeakageReport:
    """Every probe question and paraphrase against every training question (see the module's docstring);
    with ``check_train`` also every training question against the earlier ones."""
    import time

    t0 = time.perf_counter()
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    tdocs = [_doc(e.id, e.question, e.answers) for e in train]
    qdocs = [(name, _doc(e.id, text, e.answers)) for name, exs in probes.items() for e in exs
             for text in (e.question, *getattr(e, "paraphrases", ()))]
    idx = _Index(tdocs, _weights(tdocs + [d for _, d in qdocs]))
    rep = LeakageReport(threshold=threshold)
    for name, q in qdocs:
        for i, kind, s in idx.matches(q, threshold):
            d = tdocs[i]
            rep.pairs.append(Pair(kind, round(s, 4), name, q.id, q.text, d.id, d.text))
    if check_train:
        for j, q in enumerate(tdocs):
            for i, kind, s in idx.matches(q, threshold, below=j):
                d = tdocs[i]
                rep.train_pairs.append(Pair(kind, round(s, 4), "train", q.id, q.text, d.id, d.text))
    rep.pairs.sort(key=lambda p: (p.kind != "exact", p.probe_set, p.probe_id, -p.similarity, p.train_id))
    rep.train_pairs.sort(key=lambda p: (p.kind != "exact", p.probe_id, p.train_id))
    for name in probes:
        rep.leaked[name] = sorted({p.probe_id for p in rep.pairs if p.probe_set == name})
    rep.seconds = time.perf_counter() - t0
    return rep


def check_splits(splits, threshold: float = 0.8) -> LeakageReport:
    """find_leaks on a triage.Splits: its probe sets against the examples it trains on."""
    return find_leaks(splits.train, {name: getattr(splits, name) for name in PROBE_SETS}, threshold)


def drop_leaked(splits, report: LeakageReport):
    """(a copy of ``splits`` without the leaked probe examples, how many were dropped)."""
    changes, dropped = {}, 0
    for name in PROBE_SETS:
        bad = set(report.leaked.get(name, ()))
        if bad:
            kept = [e for e in getattr(splits, name) if e.id not in bad]
            dropped += len(getattr(splits, name)) - len(kept)
            changes[name] = kept
    if not changes:
        return splits, 0
    notes = list(getattr(splits, "notes", [])) + [
        f"leakage: dropped {dropped} probe example(s) that duplicate training questions"]
    return dataclasses.replace(splits, **changes, notes=notes), dropped
