"""SliCK knowledge triage (Gekhman et al. 2024) and the train / probe splits built from it.

For each fact, ``spec.prompts`` few-shot prompts with ``spec.shots`` exemplars of its relation:

* P(T=0): share of the prompts whose greedy answer is correct (normalised exact match,
  ``prompts.is_correct`` of ``PromptFormat.decode_answer``), the answer decoded up to a stop token or
  :func:`answer_budget` tokens.
* P(T>0): share of the ``spec.samples`` samples per prompt (temperature ``spec.temperature``, top-k 40)
  whose answer is correct. It only decides the category where P(T=0) = 0 (WeaklyKnown vs Unknown) and
  is reported only there (None elsewhere).
* HighlyKnown: P(T=0) = 1; MaybeKnown: 0 < P(T=0) < 1; WeaklyKnown: P(T=0) = 0 and P(T>0) > 0;
  Unknown: both 0.

How it is computed (``scoring.walk``), and why it is exact: every (fact, prompt) has one greedy walk
and, while the fact may still need them, ``spec.samples`` sampled walks, all run together after ONE
forward pass over the prompt (its few-shot prefix is cached once per exemplar set). A sampled walk's
noise is its own counter-based stream (``scoring.row_uniform`` keyed by seed, fact id, prompt and sample
index), so its tokens do not depend on batching or on which other walks run or stop: the same seed gives
the same samples as decoding each one alone (``bench/triage_speed.py`` checks this against
``transformers`` ``generate()``). Walks leave early only where their output can no longer change a
category:

* any walk whose text can no longer normalise to an accepted answer (``prompts.could_become``; exact);
* a fact's sampled walks once one of its greedy answers is correct (P(T=0) > 0: samples do not count)
  or once one of its samples is correct (P(T>0) > 0 is all WeaklyKnown needs).

So the categories and P(T=0) are those of the full procedure; P(T>0) is exact where it is 0 and, for a
WeaklyKnown fact, the share of correct samples found before sampling stopped: a lower bound of the full
share (> 0 either way, which is all the category reads).

Exemplar sets are drawn per relation (seeded) and shared by the facts of that relation (never containing
the fact itself), so a few-shot prefix is computed once per (relation, set) and cached for all its facts;
each fact still sees ``prompts`` distinct random sets, as in the paper. Facts without a relation draw
exemplars from the other facts without one.

``build_splits`` turns the categories into: ``train`` (after the Unknown policy), ``known_probe``
(held-out Known: HighlyKnown and MaybeKnown, never trained on), ``new_facts`` (the trained facts the base model's greedy answer
never got right: WeaklyKnown, and Unknown unless dropped or relabelled), ``unknown_probe`` (held-out
Unknown) and ``drift_prompts`` (the known probe's questions, or the file's prompts).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from tuneguard import api

from .data import QAExample, load_examples, load_prompts
from .prompts import PromptFormat, could_become, is_correct
from .scoring import PrefixMemo, Walk, model_device, walk

log = logging.getLogger(__name__)

HIGHLY_KNOWN, MAYBE_KNOWN, WEAKLY_KNOWN, UNKNOWN = "HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"
KNOWN = (HIGHLY_KNOWN, MAYBE_KNOWN)  # the papers' "Known": the format stage trains on them, the known probe holds them out
CATEGORIES = (HIGHLY_KNOWN, MAYBE_KNOWN, WEAKLY_KNOWN, UNKNOWN)
COUNT_KEYS = {HIGHLY_KNOWN: "highly_known", MAYBE_KNOWN: "maybe_known", WEAKLY_KNOWN: "weakly_known",
              UNKNOWN: "unknown"}
SAMPLE_TOP_K = 40
ANSWER_SLACK = 3  # tokens an answer may use beyond the fact's longest accepted answer (e.g. "The", ".")
MAX_ANSWER_TOKENS = 32


def categorize(p_greedy: float, p_sample: Optional[float]) -> str:
    """SliCK category from P(T=0) and P(T>0) (P(T>0) only matters when P(T=0) = 0)."""
    if p_greedy >= 1.0:
        return HIGHLY_KNOWN
    if p_greedy > 0.0:
        return MAYBE_KNOWN
    if p_sample is not None and p_sample > 0.0:
        return WEAKLY_KNOWN
    return UNKNOWN


@dataclass
class TriageResult:
    categories: dict[str, str]  # example id -> category
    p_greedy: dict[str, float]
    p_sample: dict[str, Optional[float]]  # None where not sampled (P(T=0) > 0 or samples = 0)
    seconds: float = 0.0
    slick: bool = True  # False: the closed-book check used when triage is disabled

    def counts(self) -> dict:
        """api.TriageCounts-compatible counts (dropped/relabelled are filled in by build_splits)."""
        out = {k: 0 for k in COUNT_KEYS.values()}
        for c in self.categories.values():
            out[COUNT_KEYS[c]] += 1
        out.update(dropped=0, relabelled=0)
        return out


def _exemplar_sets(examples: Sequence[QAExample], n_prompts: int, shots: int, seed: int,
                   pool_examples: Optional[Sequence[QAExample]] = None):
    """For each example id, ``n_prompts`` exemplar lists of its relation (never containing itself), drawn
    from ``pool_examples`` (default: the examples themselves)."""
    by_rel: dict[Optional[str], list[QAExample]] = {}
    for ex in (pool_examples if pool_examples is not None else examples):
        by_rel.setdefault(ex.relation, []).append(ex)
    wanted = {ex.relation for ex in examples}
    for ex in examples:  # an example whose relation has no pool forms its own
        if ex.relation not in by_rel:
            by_rel[ex.relation] = [ex]
    chosen: dict[str, list[list[QAExample]]] = {}
    for rel, pool in sorted(by_rel.items(), key=lambda kv: str(kv[0])):
        if rel not in wanted:
            continue
        rng = random.Random(f"slick:{seed}:{rel}")
        k = min(shots, len(pool) - 1)
        sets: list[list[QAExample]] = []

        def new_set(exclude: Optional[QAExample] = None):
            cands = [e for e in pool if e is not exclude and e.id != getattr(exclude, "id", None)]
            s = rng.sample(cands, k) if k > 0 else []
            sets.append(s)
            return s

        for _ in range(n_prompts + 1):
            new_set()
        for ex in [e for e in examples if e.relation == rel]:
            if k == 0:
                chosen[ex.id] = [[] for _ in range(n_prompts)]
                continue
            mine = [s for s in sets if all(e.id != ex.id for e in s)][:n_prompts]
            while len(mine) < n_prompts:
                mine.append(new_set(exclude=ex))
            chosen[ex.id] = mine
    return chosen


def answer_budget(fmt: PromptFormat, ex: QAExample) -> int:
    """New tokens a greedy or sampled answer to ``ex`` may use, the stop token included: the longest
    accepted answer's tokens + ANSWER_SLACK (room for an article, a period and the stop), at most
    MAX_ANSWER_TOKENS. A per-fact constant, so a fact's answers never depend on which facts it is
    triaged with."""
    return min(max(len(fmt.answer_ids(a)) for a in ex.answers) + ANSWER_SLACK, MAX_ANSWER_TOKENS)


def sample_key(seed: int, example_id: str, prompt: int, sample: int) -> str:
    """The noise stream (scoring.row_uniform) of one sample: fixed by the seed, the fact, which of its
    prompts and which sample, nothing else."""
    return f"slick:{seed}:{example_id}:{prompt}:{sample}"


def triage(model, tokenizer, examples: Sequence[QAExample], spec: api.TriageSpec, seed: int = 0,
           device=None, batch_size: int = 32, progress: bool = True,
           fmt: Optional[PromptFormat] = None,
           exemplars: Optional[Sequence[QAExample]] = None) -> TriageResult:
    """Categorise every example by what the (base) model knows. Few-shot exemplars come from
    ``exemplars`` (default: the examples themselves). ``device`` is taken from the model; the argument is
    accepted for symmetry with the rest of the trainer. ``batch_size``: prompts per forward pass."""
    from tqdm.auto import tqdm

    t0 = time.time()
    fmt = fmt or PromptFormat(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sets = _exemplar_sets(examples, spec.prompts, spec.shots, seed, exemplars)
    prompt_ids = {(i, j): fmt.prompt_ids(ex, shots) for i, ex in enumerate(examples)
                  for j, shots in enumerate(sets[ex.id])}
    set_of = {(i, j): tuple(e.id for e in shots) for i, ex in enumerate(examples)
              for j, shots in enumerate(sets[ex.id])}
    budgets = [answer_budget(fmt, ex) for ex in examples]
    tally = _Tally(fmt, examples, spec.prompts, spec.samples)
    memo = PrefixMemo(model, model_device(model))
    bar = tqdm(total=len(prompt_ids), desc="triage", unit="prompt", disable=not progress)
    for rows, plen in _sessions(prompt_ids, set_of, batch_size):
        walks = []
        for r, (i, j) in enumerate(rows):
            walks.append(Walk(r, None, budgets[i], (i, j)))
            if tally.needs_samples(i):
                walks += [Walk(r, sample_key(seed, examples[i].id, j, s), budgets[i], (i, j))
                          for s in range(spec.samples)]
        walk(model, [prompt_ids[k] for k in rows], walks, tally, pad_id, fmt.stop_ids, prefix_len=plen,
             memo=memo, temperature=spec.temperature, top_k=SAMPLE_TOP_K)
        bar.update(len(rows))
    bar.close()
    p_greedy = {ex.id: sum(tally.greedy[i]) / spec.prompts for i, ex in enumerate(examples)}
    todo = [i for i, ex in enumerate(examples) if p_greedy[ex.id] == 0.0]
    p_sample: dict[str, Optional[float]] = {ex.id: None for ex in examples}
    if spec.samples > 0:
        for i in todo:
            p_sample[examples[i].id] = tally.hits[i] / (spec.prompts * spec.samples)
    cats = {ex.id: categorize(p_greedy[ex.id], p_sample[ex.id]) for ex in examples}
    res = TriageResult(categories=cats, p_greedy=p_greedy, p_sample=p_sample, seconds=time.time() - t0)
    log.info("triage of %d facts in %.1fs: %s", len(examples), res.seconds, res.counts())
    return res


class _Tally:
    """The judge of triage's walks (scoring.WalkJudge): records, per fact, which prompts' greedy answers
    are correct and how many samples are, and ends walks that can no longer change a category (see the
    module docstring). Texts are judged once per (fact, tokens): a prompt's samples mostly agree."""

    def __init__(self, fmt: PromptFormat, examples: Sequence[QAExample], n_prompts: int, samples: int):
        self.fmt, self.answers, self.samples = fmt, [ex.answers for ex in examples], samples
        self.greedy = [[False] * n_prompts for _ in examples]
        self.hits = [0] * len(examples)
        self._open: dict[tuple, bool] = {}
        self._correct: dict[tuple, bool] = {}

    def needs_samples(self, i: int) -> bool:
        """Can fact i's samples still change its category? Only while no greedy answer and no sample of
        it has been correct."""
        return self.samples > 0 and self.hits[i] == 0 and not any(self.greedy[i])

    def finished(self, w: Walk) -> None:
        i, j = w.owner
        key = (i, tuple(w.tokens))
        ok = self._correct.get(key)
        if ok is None:
            ok = self._correct[key] = is_correct(self.fmt.decode_answer(w.tokens), self.answers[i])
        if w.key is None:
            self.greedy[i][j] = ok
        elif ok:
            self.hits[i] += 1

    def keep(self, w: Walk) -> bool:
        i, _ = w.owner
        if w.key is not None and not self.needs_samples(i):
            return False
        key = (i, tuple(w.tokens))
        ok = self._open.get(key)
        if ok is None:
            ok = self._open[key] = could_become(self.fmt.decode_answer(w.tokens), self.answers[i])
        return ok


def _lcp_len(seqs) -> int:
    """Length of the longest common prefix, leaving every sequence at least one token of its own."""
    first, n = seqs[0], min(len(s) for s in seqs) - 1
    for k in range(n):
        if any(s[k] != first[k] for s in seqs):
            return k
    return max(n, 0)


def _sessions(prompt_ids: dict, set_of: dict, batch_size: int):
    """(rows, shared prefix length) batches of at most ``batch_size`` prompts. The prompts of one
    exemplar set form a group whose common prefix (the set's exemplar turns, and more when all its
    questions begin alike) is the same for every batch of the group, so it is run once; prompts whose
    set no other prompt uses are packed together, sharing what they share (a system prompt)."""
    groups: dict[tuple, list] = {}
    for k in prompt_ids:
        groups.setdefault(set_of[k], []).append(k)
    singles = []
    for rows in groups.values():
        if len(rows) == 1:
            singles += rows
            continue
        plen = _lcp_len([prompt_ids[k] for k in rows])
        for b in range(0, len(rows), batch_size):
            yield rows[b:b + batch_size], plen
    for b in range(0, len(singles), batch_size):
        rows = singles[b:b + batch_size]
        yield rows, _lcp_len([prompt_ids[k] for k in rows])


def closed_book_check(model, tokenizer, examples: Sequence[QAExample], seed: int = 0, batch_size: int = 32,
                      progress: bool = True) -> TriageResult:
    """What triage does when disabled: one zero-shot greedy pass (correct -> HighlyKnown, else Unknown),
    used only to split probes; not a SliCK triage and not reported as one."""
    spec = api.TriageSpec(prompts=1, shots=0, samples=0)
    res = triage(model, tokenizer, examples, spec, seed=seed, batch_size=batch_size, progress=progress)
    res.slick = False
    return res


# ------------------------------------------------------------------------------------------ splits


@dataclass
class Splits:
    train: list[QAExample]
    known_probe: list[QAExample]
    new_facts: list[QAExample]
    unknown_probe: list[QAExample]
    drift_prompts: list[str]
    drift_are_questions: bool = True  # True: closed-book questions; False: free prompts from a file
    counts: dict = field(default_factory=dict)  # api.TriageCounts fields
    categories: dict[str, str] = field(default_factory=dict)
    slick: bool = True
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"train": len(self.train), "known_probe": len(self.known_probe), "new_facts": len(self.new_facts),
                "unknown_probe": len(self.unknown_probe), "drift_prompts": len(self.drift_prompts)}


def _holdout(items: list[QAExample], fraction: float, rng: random.Random) -> tuple[list[QAExample], list[QAExample]]:
    items = sorted(items, key=lambda e: e.id)
    rng.shuffle(items)
    n = int(round(fraction * len(items)))
    return items[:n], items[n:]


def build_splits(examples: Sequence[QAExample], result: TriageResult, dataset_spec: api.DatasetSpec,
                 triage_spec: api.TriageSpec, seed: int = 0,
                 known_probe_examples: Optional[Sequence[QAExample]] = None,
                 unknown_probe_examples: Optional[Sequence[QAExample]] = None,
                 drift_prompts: Optional[Sequence[str]] = None) -> Splits:
    """Deterministic (by seed) splits; ``result`` must cover the examples and any probe examples.

    Without probe files, ``holdoutFraction`` of the Known facts (HighlyKnown and MaybeKnown, each
    category on its own) becomes the known probe and the same fraction of the Unknown facts the unknown
    probe (WeaklyKnown facts are all trained on). The known probe is the paper's held-out Known set; the
    evaluator keeps the facts the reference answers. A probe file replaces the split for its side: the
    known file's Known facts and the unknown file's Unknown facts are used (the rest is ignored).
    Unknown training facts then follow ``unknownPolicy``: keep; drop; or abstain (target := abstention
    text). With a disabled triage (``result.slick`` False) the policy is not applied."""
    cats = result.categories
    rng = random.Random(f"splits:{seed}")
    by_cat: dict[str, list[QAExample]] = {c: [] for c in CATEGORIES}
    for ex in examples:
        by_cat[cats[ex.id]].append(ex)
    frac = dataset_spec.holdout_fraction
    notes: list[str] = []

    def probe_and_train(categories: tuple, probe_file: Optional[Sequence[QAExample]], label: str):
        """A probe of some categories (from its own file, or held out of the training data, stratified by
        category) and the training examples of those categories that remain."""
        if probe_file is None:
            probe, rest = [], []
            for c in categories:
                p, r = _holdout(by_cat[c], frac, rng)
                probe, rest = probe + p, rest + r
            return probe, rest
        probe = [e for e in probe_file if cats.get(e.id) in categories]
        notes.append(f"{label} probe: {len(probe)} {'/'.join(categories)} of {len(probe_file)} in the file")
        return probe, [e for c in categories for e in by_cat[c]]

    # known first, then unknown: the order the seeded rng draws the hold-outs in
    known_probe, known_train = probe_and_train(KNOWN, known_probe_examples, "known")
    unknown_probe, unk_train = probe_and_train((UNKNOWN,), unknown_probe_examples, "unknown")

    policy = triage_spec.unknown_policy if result.slick else "keep"
    dropped = relabelled = 0
    train: list[QAExample] = []
    new_facts: list[QAExample] = []
    for ex in sorted(known_train + by_cat[WEAKLY_KNOWN] + unk_train, key=lambda e: e.id):
        cat = cats[ex.id]
        if cat == UNKNOWN and policy == "drop":
            dropped += 1
            continue
        if cat == UNKNOWN and policy == "abstain":
            relabelled += 1
            train.append(dataclasses.replace(ex, answers=list(ex.answers), target=triage_spec.abstention_text))
            continue
        t = dataclasses.replace(ex, answers=list(ex.answers))  # a copy: every field (paraphrases too) kept
        train.append(t)
        if cat in (WEAKLY_KNOWN, UNKNOWN):
            new_facts.append(t)
    rng.shuffle(train)
    if not train:
        raise ValueError("no training examples are left after the probe hold-out and the Unknown policy "
                         f"({result.counts()}); lower holdoutFraction or use unknownPolicy keep/abstain")
    if drift_prompts is not None:
        drift, drift_q = list(drift_prompts), False
    else:
        drift, drift_q = [e.question for e in known_probe], True
    counts = {k: 0 for k in COUNT_KEYS.values()}  # of the training file (probe files are not counted)
    for ex in examples:
        counts[COUNT_KEYS[cats[ex.id]]] += 1
    counts.update(dropped=dropped, relabelled=relabelled)
    return Splits(train=train, known_probe=known_probe, new_facts=new_facts, unknown_probe=unknown_probe,
                  drift_prompts=drift, drift_are_questions=drift_q, counts=counts, categories=dict(cats),
                  slick=result.slick, notes=notes)


def prepare(model, tokenizer, spec: api.FineTuneJobSpec, seed: int = 0, batch_size: int = 32,
            progress: bool = True) -> tuple[Splits, TriageResult]:
    """Load the datasets of a job spec, triage them with the base model and build the splits: the one
    call the training loop needs before training."""
    ds = spec.datasets
    train = load_examples(ds.train, ds.format)
    known = load_examples(ds.probes.known, "qa", min_examples=1) if ds.probes.known else None
    unknown = load_examples(ds.probes.unknown, "qa", min_examples=1) if ds.probes.unknown else None
    drift = load_prompts(spec.evaluation.drift_prompts) if spec.evaluation.drift_prompts else None
    everything: list[QAExample] = list(train)
    seen = {e.id for e in everything}
    for extra, tag in ((known, "known"), (unknown, "unknown")):
        for e in extra or []:
            if e.id in seen:  # ids only need to be unique within a file
                e.id = f"{tag}-probe:{e.id}"
            seen.add(e.id)
            everything.append(e)
    if spec.triage.enabled:
        result = triage(model, tokenizer, everything, spec.triage, seed=seed, batch_size=batch_size,
                        progress=progress)
    else:
        result = closed_book_check(model, tokenizer, everything, seed=seed, batch_size=batch_size,
                                   progress=progress)
    splits = build_splits(train, result, ds, spec.triage, seed=seed, known_probe_examples=known,
                          unknown_probe_examples=unknown, drift_prompts=drift)
    if train.duplicates:
        splits.notes.append(f"{train.duplicates} duplicate question(s) in the training data were merged")
    return splits, result
