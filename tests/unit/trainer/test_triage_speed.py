"""The fast triage against straightforward SliCK, on a tiny model that knows some facts: same categories.

The tiny model is trained for a few seconds on few-shot prompts of 8 of 12 facts, so that greedy answers
are right on some prompts and samples on some others (all four categories can occur). Two references:
a straightforward decoder written here (each answer alone, the whole sequence re-run for every token, no
cache, no batching, no early stop), and the bench's plain generate() implementation (bench/triage_speed.py,
its comparison logic as the bench runs it)."""

from collections import Counter

import pytest
import torch

from tuneguard import api
from tuneguard_trainer import triage as tri
from tuneguard_trainer.data import load_examples
from tuneguard_trainer.methods import collate
from tuneguard_trainer.prompts import PromptFormat, is_correct
from tuneguard_trainer.scoring import SamplingTable, row_uniform, sample_tokens

from .conftest import make_tiny_model

SPEC = api.TriageSpec(prompts=2, shots=1, samples=4, temperature=0.5)


@pytest.fixture(scope="module")
def knowing(tiny_tokenizer):
    """(model, facts): a tiny Llama trained on the few-shot prompts of the first 8 of 12 capital facts."""
    facts = [e for e in load_examples("bundled://facts") if e.relation == "capital"][:12]
    model = make_tiny_model(tiny_tokenizer)
    fmt = PromptFormat(tiny_tokenizer)
    sets = tri._exemplar_sets(facts, SPEC.prompts, SPEC.shots, 0)
    feats = []
    for e in facts[:8]:
        for shots in sets[e.id]:
            p, a = fmt.prompt_ids(e, shots), fmt.answer_ids(e.answers[0]) + fmt.end_ids[:1]
            feats.append({"input_ids": p + a, "labels": [-100] * len(p) + a})
    batch = collate(feats, tiny_tokenizer.pad_token_id)
    batch.pop("keep")  # the trainer's logits_to_keep hint; the model's own loss takes the rest
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(40):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), facts


def straightforward(model, tok, examples, spec, seed):
    """SliCK with nothing clever: every greedy answer and every sample decoded alone by re-running the
    whole sequence for each token, to its stop token or answer budget; P(T>0) over all samples."""
    fmt = PromptFormat(tok)
    sets = tri._exemplar_sets(examples, spec.prompts, spec.shots, seed)

    def answer(prompt, budget, key):
        toks = []
        with torch.no_grad():
            while len(toks) < budget:
                logits = model(input_ids=torch.tensor([prompt + toks])).logits[:, -1].float()
                t = int(logits.argmax(-1)) if key is None else int(sample_tokens(
                    logits, torch.tensor([row_uniform(key, len(toks))]), spec.temperature, tri.SAMPLE_TOP_K))
                toks.append(t)
                if t in fmt.stop_ids:
                    break
        return fmt.decode_answer(toks)

    cats, p_greedy, p_sample = {}, {}, {}
    for ex in examples:
        budget = tri.answer_budget(fmt, ex)
        prompts = [fmt.prompt_ids(ex, s) for s in sets[ex.id]]
        p_greedy[ex.id] = sum(is_correct(answer(p, budget, None), ex.answers) for p in prompts) / spec.prompts
        p_sample[ex.id] = None
        if p_greedy[ex.id] == 0:
            hits = sum(is_correct(answer(p, budget, tri.sample_key(seed, ex.id, j, s)), ex.answers)
                       for j, p in enumerate(prompts) for s in range(spec.samples))
            p_sample[ex.id] = hits / (spec.prompts * spec.samples)
        cats[ex.id] = tri.categorize(p_greedy[ex.id], p_sample[ex.id])
    return cats, p_greedy, p_sample


def test_fast_triage_equals_straightforward_slick(knowing, tiny_tokenizer):
    """Same categories and P(T=0) as decoding every answer alone without early stops; P(T>0) exact where
    it is 0 and a lower bound where the fast path stopped sampling at a correct sample."""
    model, facts = knowing
    fast = tri.triage(model, tiny_tokenizer, facts, SPEC, seed=0, progress=False)
    cats, p_greedy, p_sample = straightforward(model, tiny_tokenizer, facts, SPEC, seed=0)
    assert fast.categories == cats
    assert fast.p_greedy == p_greedy
    for e in facts:
        if p_sample[e.id] is None or p_sample[e.id] == 0:
            assert fast.p_sample[e.id] == p_sample[e.id]
        else:
            assert 0 < fast.p_sample[e.id] <= p_sample[e.id]
    assert len(set(cats.values())) >= 2, Counter(cats.values())  # the comparison decides something


def test_early_stops_never_change_a_category(knowing, tiny_tokenizer, monkeypatch):
    """The same triage with its judge's early stops switched off (every walk runs to its stop token or
    budget; samples for every fact) gives the same categories and P(T=0)."""
    model, facts = knowing
    fast = tri.triage(model, tiny_tokenizer, facts, SPEC, seed=0, progress=False)
    monkeypatch.setattr(tri._Tally, "keep", lambda self, w: True)
    monkeypatch.setattr(tri._Tally, "needs_samples", lambda self, i: self.samples > 0)
    full = tri.triage(model, tiny_tokenizer, facts, SPEC, seed=0, progress=False)
    assert full.categories == fast.categories and full.p_greedy == fast.p_greedy
    assert all(full.p_sample[e.id] is None or fast.p_sample[e.id] <= full.p_sample[e.id] for e in facts)


def test_bench_comparison_finds_no_mismatch(knowing, tiny_tokenizer):
    """bench/triage_speed.py's comparison (ours vs plain generate(), interleaved chunks) on the tiny model."""
    from bench.triage_speed import compare

    model, facts = knowing
    r = compare(model, tiny_tokenizer, facts, SPEC, seed=0, exemplars=facts, chunks=2)
    assert r["category_mismatches"] == 0 and r["p_greedy_mismatches"] == 0, r["mismatches"]
    assert r["p_sample_exact_where_zero"]
    assert sum(r["counts"]["ours"].values()) == len(facts) and r["counts"]["ours"] == r["counts"]["reference"]
    assert r["facts_per_s"]["ours"] > 0 and r["facts_per_s"]["reference"] > 0


def test_sampler_is_the_temperature_top_k_distribution():
    """SamplingTable draws follow softmax(top-k(scores / T)) with ties at the k-th score kept, and a
    draw depends only on its own row and uniform."""
    torch.manual_seed(0)
    scores = torch.randn(2, 50)
    scores[1, :] = scores[0, :]
    scores[1, 7] = scores[1, 3]  # a tie
    t, k = 0.5, 5
    table = SamplingTable(scores, t, k)
    u = torch.rand(20000, dtype=torch.float64)
    for row in (0, 1):
        draws = table.draw(torch.full((len(u),), row), u)
        sc = scores[row] / t
        keep = sc >= torch.topk(sc, k).values[-1]
        p = torch.softmax(sc.masked_fill(~keep, float("-inf")), -1)
        freq = torch.bincount(draws, minlength=50).double() / len(u)
        assert set(draws.tolist()) <= set(keep.nonzero().flatten().tolist())
        assert (freq - p).abs().max() < 0.02
    one = sample_tokens(scores[:1], u[:1], t, k)
    assert int(one) == int(table.draw(torch.zeros(1, dtype=torch.long), u[:1]))
    assert row_uniform("a", 1) == row_uniform("a", 1) != row_uniform("a", 2)
    assert 0.0 <= row_uniform("b", 0) < 1.0
