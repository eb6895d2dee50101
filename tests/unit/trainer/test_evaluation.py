"""Evaluation: decoded exact match equals transformers.generate(), figure definitions, drift, eval mode."""

import copy
import time

import pytest
import torch

from tuneguard import contract
from tuneguard_trainer.data import QAExample, load_examples
from tuneguard_trainer.evaluation import Evaluator
from tuneguard_trainer.prompts import PromptFormat, classify
from tuneguard_trainer.triage import Splits

from .conftest import Oracle, make_tiny_model


def splits_of(train, known=(), unknown=(), new=(), drift=None):
    return Splits(train=list(train), known_probe=list(known), new_facts=list(new), unknown_probe=list(unknown),
                  drift_prompts=[e.question for e in known] if drift is None else drift)


def hf_generate_classes(model, tok, fmt, items, abstention, max_new_tokens=24):
    """The reference: transformers' own generate(), one prompt at a time (no padding, no caching tricks)."""
    out = []
    for it in items:
        ids = torch.tensor([it.prompt])
        gen = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=sorted(fmt.stop_ids),
                             pad_token_id=tok.pad_token_id)
        out.append(classify(fmt.decode_answer(gen[0, ids.shape[1]:].tolist()), it.ex.answers, abstention))
    return out


def rig_stop_token(model, tok, share=0.35):
    """Give a random tiny model a stop habit: an untied lm_head whose <|im_end|> bias makes it the argmax
    at about `share` of positions, so greedy answers are short and end like real ones."""
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        torch.manual_seed(0)
        head.weight.normal_(0.0, 1.0)  # untied: tied random embeddings just echo the last input token
        head.bias.zero_()
        ids = torch.tensor([tok("What is the capital of France? Paris. Who wrote Hamlet? Shakespeare")["input_ids"]])
        hidden = model.model(input_ids=ids).last_hidden_state[0]
        logits = head(hidden)
        margin = logits.max(-1).values - logits[:, eos]
        head.bias[eos] = torch.quantile(margin, share) + 1e-3
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model


@pytest.fixture
def probe_setup(tiny_tokenizer):
    facts = load_examples("bundled://facts")
    # A "chaotic" random model (large init) so that answers depend on the whole question.
    model = rig_stop_token(make_tiny_model(tiny_tokenizer, init_range=0.5), tiny_tokenizer)
    train, probe = facts[:120], facts[200:260]
    ev = Evaluator(tiny_tokenizer, splits_of(train), model, max_probe_size=8)
    fmt = ev.fmt
    # Half of the probe questions get the model's own greedy answer as their accepted answer (when that
    # answer is short, stopped, and tokenises canonically): the evaluator must call exactly those correct.
    items = [ev._item(e) for e in probe]
    outs = ev_decode(model, tiny_tokenizer, fmt, items)
    rigged = []
    for k, (it, o) in enumerate(zip(items, outs)):
        text = fmt.decode_answer(o)
        canonical = fmt.answer_ids(text) + [fmt.end_ids[0]] == o
        if k % 2 == 0 and text and canonical:
            it.ex = QAExample(id=it.ex.id, question=it.ex.question, answers=[text], relation=it.ex.relation)
            rigged.append(k)
    return model, ev, items, rigged


def ev_decode(model, tok, fmt, items):
    from tuneguard_trainer.scoring import decode

    return [o[0] for o in decode(model, [it.prompt for it in items], tok.pad_token_id, fmt.stop_ids, 24)]


def test_decoded_em_equals_transformers_generate_em(probe_setup, tiny_tokenizer):
    model, ev, items, rigged = probe_setup
    assert len(rigged) >= 5, "the rigged tiny model should produce a few short canonical answers"
    ref = hf_generate_classes(model, tiny_tokenizer, ev.fmt, items, ev.abstention_text)
    assert [i for i, c in enumerate(ref) if c == "correct"] == rigged
    assert ev.classify_items(model, items, True, "generate") == ref
    assert ev.classify_items(model, items, True, "decode") == ref  # the default: decoding, rows stopped early
    new_only = ev.classify_items(model, items, False, "decode")  # pruning when only correctness counts
    assert [c == "correct" for c in new_only] == [c == "correct" for c in ref]


def _tail(fmt, tok, ex, shots):
    start = tok.convert_tokens_to_ids("<|im_start|>")
    ids = fmt.prompt_ids(ex, shots)
    return tuple(ids[[i for i, t in enumerate(ids) if t == start][-2]:])


def test_figure_definitions_on_handcrafted_answers(tiny_tokenizer):
    """known: 3 correct, 1 abstains ("I don't know"), 1 wrong -> accuracy 3/5,
    hallucination 1/5. unknown: 2 x "I don't know", 1 x "I'm not sure.", 2 fabricated
    -> abstention 3/5, fabrication 2/5. new facts: 1 of 2 learned."""
    tok = tiny_tokenizer
    fmt = PromptFormat(tok)
    facts = load_examples("bundled://facts")
    caps = [e for e in facts if e.relation == "capital"]
    train, known, unknown = caps[:10], caps[10:15], [e for e in facts if e.id.startswith("fict-capital")][:5]
    new = train[:2]
    end = [fmt.end_ids[0]]
    say = lambda text: fmt.answer_ids(text) + end
    splits = splits_of(train, known, unknown, new)
    ev0 = Evaluator(tok, splits_of(train), Oracle({}, len(tok), 5), max_probe_size=50)
    shots = ev0.shots_for
    base_out = {_tail(fmt, tok, e, shots(e)): say(e.answers[0]) for e in known}
    base_out.update({_tail(fmt, tok, e, shots(e)): say("Atlantis") for e in unknown})
    noise = tok.convert_tokens_to_ids("Q")
    base = Oracle(base_out, len(tok), noise)
    ev = Evaluator(tok, splits, base, max_probe_size=50)
    b = ev.base_figures
    assert b["known_accuracy"] == 1.0 and b["hallucination_rate"] == 0.0
    assert b["fabrication_rate"] == 1.0 and b["abstention_rate"] == 0.0 and b["new_fact_accuracy"] == 0.0
    assert b["drift_kl"] == 0.0 and b["param_drift_l2"] == 0.0
    tuned_out = {}
    for e, text in zip(known, [None, None, None, "I don't know", "Lyon"]):
        tuned_out[_tail(fmt, tok, e, shots(e))] = say(text or e.answers[0])
    for e, text in zip(unknown, ["I don't know", "I don't know.", "I'm not sure.", "Atlantis", "Paris"]):
        tuned_out[_tail(fmt, tok, e, shots(e))] = say(text)
    tuned_out[_tail(fmt, tok, new[0], shots(new[0]))] = say(new[0].answers[0])
    tuned = Oracle(tuned_out, len(tok), noise)
    f = ev.evaluate(tuned)
    assert tuple(f) == contract.FIGURES
    assert f["known_accuracy"] == pytest.approx(3 / 5) and f["hallucination_rate"] == pytest.approx(1 / 5)
    assert f["abstention_rate"] == pytest.approx(3 / 5) and f["fabrication_rate"] == pytest.approx(2 / 5)
    assert f["new_fact_accuracy"] == pytest.approx(1 / 2)
    assert ev.evaluate(tuned, mode="generate") == f


def test_drift_and_param_drift(tiny_model, tiny_tokenizer):
    facts = load_examples("bundled://facts")
    splits = splits_of(facts[:60], drift=[e.question for e in facts[100:116]])
    ev = Evaluator(tiny_tokenizer, splits, tiny_model, max_probe_size=16)
    assert ev.base_figures["drift_kl"] == 0.0 and ev.base_figures["param_drift_l2"] == 0.0
    tuned = copy.deepcopy(tiny_model)
    torch.manual_seed(1)
    with torch.no_grad():
        noise = {n: 0.05 * torch.randn_like(p) for n, p in tuned.named_parameters()}
        for n, p in tuned.named_parameters():
            p.add_(noise[n])
    f = ev.evaluate(tuned)
    assert f["drift_kl"] > 0
    theta0 = torch.sqrt(sum((p.detach() ** 2).sum() for p in tiny_model.parameters()))
    expect = float(torch.sqrt(sum((v ** 2).sum() for v in noise.values())) / theta0)
    assert f["param_drift_l2"] == pytest.approx(expect, rel=1e-4)
    # The top-k cache (forced by a tiny budget) is a lower bound of the full KL and close to it.
    ev_k = Evaluator(tiny_tokenizer, splits, tiny_model, max_probe_size=16, drift_cache_mb=0, drift_top_k=64)
    assert not ev_k.drift_exact and ev_k.base_figures["drift_kl"] == pytest.approx(0.0, abs=1e-6)
    kl_k = ev_k.evaluate(tuned)["drift_kl"]
    assert 0 < kl_k <= f["drift_kl"] + 1e-6


def test_eval_mode_restored_and_loss(tiny_model, tiny_tokenizer):
    facts = load_examples("bundled://facts")
    ev = Evaluator(tiny_tokenizer, splits_of(facts[:60], new=facts[:10]), tiny_model, max_probe_size=16)
    tiny_model.train()
    f = ev.evaluate(tiny_model)
    assert tiny_model.training
    assert f["eval_loss"] > 0 and f["new_fact_accuracy"] == 0.0
    assert f["eval_loss"] == pytest.approx(ev.eval_loss(tiny_model), rel=1e-5)  # merged pass == standalone
    assert f["known_accuracy"] is None and f["abstention_rate"] is None  # empty probes -> None


@pytest.mark.slow
def test_real_smollm2_decoded_classes_equal_transformers_generate(smollm2):
    """On ~30 real and fictional probes, SmolLM2's classes from our decoder equal transformers.generate()'s."""
    model, tok = smollm2
    facts = load_examples("bundled://facts")
    train = [e for e in facts if e.id.startswith("real-")][1::3]
    probes = [e for e in facts if e.id.startswith("real-")][::12][:20] + \
        [e for e in facts if e.id.startswith("fict-")][::16][:10]
    ev = Evaluator(tok, splits_of(train), model, max_probe_size=8)
    items = [ev._item(e) for e in probes]
    t0 = time.time()
    ref = hf_generate_classes(model, tok, ev.fmt, items, ev.abstention_text)
    t1 = time.time()
    gen = ev.classify_items(model, items, True, "generate")
    t2 = time.time()
    dec = ev.classify_items(model, items, True, "decode")
    t3 = time.time()
    print(f"\n{len(items)} probes: transformers.generate {t1 - t0:.1f}s, batched greedy decoding {t2 - t1:.1f}s, "
          f"stopped once decided {t3 - t2:.1f}s; correct {sum(c == 'correct' for c in ref)}, "
          f"abstained {sum(c == 'abstain' for c in ref)}, wrong {sum(c == 'wrong' for c in ref)}")
    assert gen == ref and dec == ref


def test_probes_fill_from_later_candidates_when_the_reference_answers_few():
    """A reference that answers one known candidate in 5 still gets the full probe, the first n it answers
    in order; a pool answered well costs 2n classifications, as before; calls are rounds over both pools."""
    from tuneguard_trainer.evaluation import _first_qualifying

    calls = []

    def classify(items):
        calls.append(len(items))
        return ["correct" if it % 5 == 0 or it >= 1000 else "wrong" for it in items]

    known_pool = list(range(200))
    unknown_pool = list(range(1000, 1100)) + list(range(200))  # the reference answers the first 100
    known, unknown, seen = _first_qualifying(classify, [known_pool, unknown_pool],
                                             [lambda c: c == "correct", lambda c: c != "correct"], 20)
    assert [it for it, _ in known] == list(range(0, 100, 5))  # the first 20 answered, in order
    assert [it for it, _ in unknown] == [i for i in range(200) if i % 5][:20]
    assert seen[0] >= 100 and seen[0] < 200 and seen[1] >= 125
    assert calls[0] == 80 and len(calls) <= 6  # 2n of each first, then a few rounds sized by the pass rate
    few = _first_qualifying(classify, [list(range(0, 500, 5))], [lambda c: c == "correct"], 20)
    assert few[1] == [40] and len(few[0]) == 20  # every candidate answered: 2n classified, one round
    short = _first_qualifying(classify, [list(range(12))], [lambda c: c == "correct"], 20)
    assert [it for it, _ in short[0]] == [0, 5, 10] and short[1] == [12]  # too few: all, then stop


def test_known_probe_reaches_its_size_past_the_first_candidates(tiny_tokenizer):
    """The real Evaluator on an oracle that knows one capital in four: max_probe_size 6 needs 24
    candidates, more than the first round's 12."""
    tok = tiny_tokenizer
    fmt = PromptFormat(tok)
    caps = [e for e in load_examples("bundled://facts") if e.relation == "capital"]
    train, known = caps[:10], caps[10:60]
    ev0 = Evaluator(tok, splits_of(train), Oracle({}, len(tok), 5), max_probe_size=50)
    say = lambda text: fmt.answer_ids(text) + [fmt.end_ids[0]]
    answered = known[::4]
    base = Oracle({_tail(fmt, tok, e, ev0.shots_for(e)): say(e.answers[0]) for e in answered}, len(tok),
                  tok.convert_tokens_to_ids("Q"))
    ev = Evaluator(tok, splits_of(train, known), base, max_probe_size=6)
    assert [it.ex.id for it in ev.known] == [e.id for e in answered[:6]]
    assert ev.base_figures["known_accuracy"] == 1.0
    assert ev.probe_notes["known_probe"].startswith("6 of ")
