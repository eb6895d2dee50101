"""SliCK triage: categories, decoded greedy answers, sampling only where it matters, splits."""

from collections import Counter

import pytest

from tuneguard import api
from tuneguard_trainer.data import QAExample, load_examples
from tuneguard_trainer.prompts import (PromptFormat, classify, could_abstain, encode_for_training,
                                       is_abstention, normalize_answer)
from .conftest import Oracle
from tuneguard_trainer.triage import (HIGHLY_KNOWN, MAYBE_KNOWN, UNKNOWN, WEAKLY_KNOWN, TriageResult,
                                      _exemplar_sets, build_splits, categorize, triage)


@pytest.mark.parametrize("p0, ps, cat", [
    (1.0, None, HIGHLY_KNOWN), (0.5, None, MAYBE_KNOWN), (0.25, 0.0, MAYBE_KNOWN),
    (0.0, 0.1, WEAKLY_KNOWN), (0.0, 0.0, UNKNOWN), (0.0, None, UNKNOWN),
])
def test_categories(p0, ps, cat):
    assert categorize(p0, ps) == cat


def test_normalisation_and_classes():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("Paris.") == "paris"
    assert classify("The Paris.", ["Paris"]) == "correct"
    assert classify("I don't know.", ["Paris"]) == "abstain"
    assert classify("I'm not sure, maybe Lyon", ["Paris"]) == "abstain"
    assert classify("Lyon", ["Paris"]) == "wrong"
    assert classify("Unknowable Lyon", ["Paris"]) == "wrong"  # whole words only
    assert classify("Je ne sais pas", ["Paris"], abstention_text="Je ne sais pas") == "abstain"
    # an abstention OPENS with a phrase: a committed answer with a hedge after it is a fabrication
    assert classify("Lyon, but I'm not sure", ["Paris"]) == "wrong"
    assert classify("Lyon, a city unknown to many", ["Paris"]) == "wrong"
    assert classify("Sorry, no idea.", ["Paris"]) == "abstain"


@pytest.mark.parametrize("text", ["I don't know", "i dont know anything", "Not sure.", "Sorry, no idea",
                                  "Unknown", "Lyon", "Lyon, I'm not sure", "Italy", "In 1990", "Noted", "",
                                  "The answer is unknown", "No idea at all", "Je ne sais pas", "Je suis"])
def test_could_abstain_is_exact_on_every_prefix(text):
    """could_abstain(prefix) is False only where no continuation of that prefix is an abstention: checked
    against is_abstention on the prefixes of texts that are (or are not) abstentions."""
    custom = "Je ne sais pas"
    if is_abstention(text, custom):
        assert all(could_abstain(text[:k], custom) for k in range(len(text) + 1))
    assert could_abstain(text, custom) or not is_abstention(text, custom)
    assert not could_abstain("Lyon", custom) and not could_abstain("Ital", custom)
    assert could_abstain("I", custom) and could_abstain("Je n", custom) and could_abstain("Sorry, Lyon", custom)


def test_encode_for_training_masks_prompt_and_truncates_left(tiny_tokenizer):
    fmt = PromptFormat(tiny_tokenizer)
    ex = QAExample(id="a", question="What is the capital of France?", answers=["Paris"])
    [f] = encode_for_training(tiny_tokenizer, [ex], 512)
    ans = fmt.answer_ids("Paris") + [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert f["input_ids"][-len(ans):] == ans and f["labels"][-len(ans):] == ans
    assert all(l == -100 for l in f["labels"][:-len(ans)])
    assert f["input_ids"][:-len(ans)] == fmt.prompt_ids(ex)
    [g] = encode_for_training(tiny_tokenizer, [ex], 5)
    assert g["input_ids"] == f["input_ids"][-5:] and g["labels"] == f["labels"][-5:]
    relabelled = QAExample(id="b", question=ex.question, answers=["Paris"], target="I don't know")
    [h] = encode_for_training(tiny_tokenizer, [relabelled], 512)
    assert tiny_tokenizer.decode([t for t in h["labels"] if t != -100]) == "I don't know<|im_end|>"


def test_exemplars_same_relation_never_self():
    ex = load_examples("bundled://facts")
    sets = _exemplar_sets(ex, 3, 4, seed=1)
    for e in ex:
        assert len(sets[e.id]) == 3
        for s in sets[e.id]:
            assert len(s) == 4 and all(x.relation == e.relation and x is not e for x in s)
    assert {k: [[x.id for x in s] for s in v] for k, v in sets.items()} == \
        {k: [[x.id for x in s] for s in v] for k, v in _exemplar_sets(ex, 3, 4, seed=1).items()}


def test_triage_with_an_oracle_model(tiny_tokenizer):
    """Facts whose answer the 'model' emits after their question's user turn are HighlyKnown under every
    few-shot prompt; the others are Unknown (the oracle never samples them)."""
    fmt = PromptFormat(tiny_tokenizer)
    ex = [e for e in load_examples("bundled://facts") if e.relation == "capital"][:12]
    start = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")

    def tail(e):  # the question's user turn (few-shot form) + the generation prompt
        ids = fmt.prompt_ids(e, [ex[-1]])
        return tuple(ids[[i for i, t in enumerate(ids) if t == start][-2]:])

    knows = {tail(e): fmt.answer_ids(e.answers[0]) + [fmt.end_ids[0]] for e in ex[:5]}
    noise = tiny_tokenizer.convert_tokens_to_ids("Q")
    model = Oracle(knows, len(tiny_tokenizer), noise)
    res = triage(model, tiny_tokenizer, ex, api.TriageSpec(prompts=3, shots=2, samples=2), seed=0,
                 progress=False)
    assert [res.categories[e.id] for e in ex] == [HIGHLY_KNOWN] * 5 + [UNKNOWN] * 7
    assert all(res.p_sample[e.id] is None for e in ex[:5])  # sampled only where P(T=0) = 0
    assert all(res.p_sample[e.id] == 0.0 for e in ex[5:])
    assert res.counts() == {"highly_known": 5, "maybe_known": 0, "weakly_known": 0, "unknown": 7,
                            "dropped": 0, "relabelled": 0}
    api.TriageCounts(**res.counts())


def test_triage_tiny_random_model_runs_and_is_deterministic(tiny_model, tiny_tokenizer):
    ex = load_examples("bundled://facts")[:30]
    spec = api.TriageSpec(prompts=2, shots=2, samples=2)
    a = triage(tiny_model, tiny_tokenizer, ex, spec, seed=3, progress=False)
    b = triage(tiny_model, tiny_tokenizer, ex, spec, seed=3, progress=False)
    assert a.categories == b.categories and a.p_sample == b.p_sample
    assert sum(a.counts()[k] for k in ("highly_known", "maybe_known", "weakly_known", "unknown")) == 30


def _fake_result(examples, cats):
    return TriageResult(categories={e.id: c for e, c in zip(examples, cats)},
                        p_greedy={e.id: 0.0 for e in examples}, p_sample={e.id: None for e in examples})


@pytest.mark.parametrize("policy", ["keep", "drop", "abstain"])
def test_splits_disjoint_deterministic_and_policies(policy):
    ex = load_examples("bundled://facts")[:80]
    cycle = [HIGHLY_KNOWN, MAYBE_KNOWN, WEAKLY_KNOWN, UNKNOWN]
    res = _fake_result(ex, [cycle[i % 4] for i in range(len(ex))])
    ds = api.DatasetSpec(train="bundled://facts", holdoutFraction=0.25)
    ts = api.TriageSpec(unknownPolicy=policy, abstentionText="No idea")
    s = build_splits(ex, res, ds, ts, seed=7)
    ids = lambda xs: {x.id for x in xs}
    assert not ids(s.train) & ids(s.known_probe) and not ids(s.train) & ids(s.unknown_probe)
    assert not ids(s.known_probe) & ids(s.unknown_probe)
    assert len(s.known_probe) == 10 and len(s.unknown_probe) == 5  # 25% of 20 of each Known category; of 20
    assert sorted(res.categories[x.id] for x in s.known_probe) == [HIGHLY_KNOWN] * 5 + [MAYBE_KNOWN] * 5
    assert all(res.categories[x.id] == UNKNOWN for x in s.unknown_probe)
    assert s.drift_prompts == [x.question for x in s.known_probe]
    unk_train = [x for x in s.train if res.categories[x.id] == UNKNOWN]
    if policy == "keep":
        assert len(unk_train) == 15 and s.counts["dropped"] == 0
        assert ids(s.new_facts) == {x.id for x in s.train if res.categories[x.id] in (WEAKLY_KNOWN, UNKNOWN)}
    if policy == "drop":
        assert not unk_train and s.counts["dropped"] == 15
    if policy == "abstain":
        assert len(unk_train) == 15 and all(x.target == "No idea" for x in unk_train)
        assert s.counts["relabelled"] == 15 and ids(s.new_facts) == \
            {x.id for x in s.train if res.categories[x.id] == WEAKLY_KNOWN}
    by_id = {e.id: e for e in ex}
    assert all(x.paraphrases and x.paraphrases == by_id[x.id].paraphrases for x in s.train)  # kept for shift tests
    again = build_splits(ex, res, ds, ts, seed=7)
    assert [x.id for x in again.train] == [x.id for x in s.train]
    assert [x.id for x in again.known_probe] == [x.id for x in s.known_probe]
    other = build_splits(ex, res, ds, ts, seed=8)
    assert ids(other.known_probe) != ids(s.known_probe) or ids(other.unknown_probe) != ids(s.unknown_probe)
    api.TriageCounts(**s.counts)


def test_splits_with_probe_files():
    ex = load_examples("bundled://facts")
    train, kp, up = ex[:40], ex[100:110], ex[300:310]
    cats = [HIGHLY_KNOWN] * 40 + [HIGHLY_KNOWN, UNKNOWN] * 5 + [UNKNOWN, MAYBE_KNOWN] * 5
    res = _fake_result(train + kp + up, cats)
    s = build_splits(train, res, api.DatasetSpec(train="x"), api.TriageSpec(), seed=0,
                     known_probe_examples=kp, unknown_probe_examples=up, drift_prompts=["hello"])
    assert len(s.train) == 40 and [x.id for x in s.known_probe] == [kp[i].id for i in (0, 2, 4, 6, 8)]
    assert [x.id for x in s.unknown_probe] == [up[i].id for i in (0, 2, 4, 6, 8)]
    assert s.drift_prompts == ["hello"] and not s.drift_are_questions
    assert s.counts["highly_known"] == 40  # counts are of the training file


@pytest.mark.slow
def test_real_smollm2_triage(smollm2):
    """SmolLM2-135M knows some real facts and (almost) none of the fictional ones."""
    import time

    model, tok = smollm2
    facts = load_examples("bundled://facts")
    real = [e for e in facts if e.id.startswith("real-")][::12][:20]
    fict = [e for e in facts if e.id.startswith("fict-")][::8][:20]
    t0 = time.time()
    res = triage(model, tok, real + fict, api.TriageSpec(prompts=2, samples=4), seed=0, progress=False,
                 exemplars=facts)  # exemplars from the whole relation pool, as in a real run
    dt = time.time() - t0
    cr = Counter(res.categories[e.id] for e in real)
    cf = Counter(res.categories[e.id] for e in fict)
    print(f"\ntriage of 40 facts (prompts=2, shots=4, samples=4): {dt:.1f}s; real {dict(cr)}; fictional {dict(cf)}")
    assert cr[HIGHLY_KNOWN] >= 3
    assert cf[UNKNOWN] >= 14 and cf[HIGHLY_KNOWN] <= 1


def test_answers_found_only_by_sampling_are_weakly_known(tiny_tokenizer):
    """A model whose greedy answer is wrong but which says the answer in about half of its T=0.5 samples:
    every fact is WeaklyKnown, with P(T=0) = 0 and 0 < P(T>0)."""
    fmt = PromptFormat(tiny_tokenizer)
    ex = [e for e in load_examples("bundled://facts") if e.relation == "capital"][:6]
    start = tiny_tokenizer.convert_tokens_to_ids("<|im_start|>")

    def tail(e):
        ids = fmt.prompt_ids(e, [ex[-1]])
        return tuple(ids[[i for i, t in enumerate(ids) if t == start][-2]:])

    noise = tiny_tokenizer.convert_tokens_to_ids("Q")
    outputs = {tail(e): fmt.answer_ids(e.answers[0]) + [fmt.end_ids[0]] for e in ex}

    class Coin(Oracle):
        """Greedy says noise right after a question; the answer's first token is a whisker behind (so
        about half of the T=0.5 samples start the answer), then the answer follows deterministically."""

        def _row(self, seq):
            for t, ans in self.outputs.items():
                if tuple(seq[-len(t):]) == t:
                    return {noise: 10.0, ans[0]: 9.999}
            return super()._row(seq)

    model = Coin(outputs, len(tiny_tokenizer), noise)
    spec = api.TriageSpec(prompts=4, shots=1, samples=8, temperature=0.5)
    res = triage(model, tiny_tokenizer, ex, spec, seed=0, progress=False, exemplars=ex)
    assert set(res.categories.values()) == {WEAKLY_KNOWN}
    # sampling stops at a fact's first correct sample: its P(T>0) is then a lower bound, > 0
    assert all(0 < res.p_sample[e.id] <= 0.8 for e in ex)
    assert all(res.p_greedy[e.id] == 0 for e in ex)


@pytest.mark.parametrize("enabled", [True, False])
def test_prepare_from_a_job_spec(tmp_path, tiny_model, tiny_tokenizer, enabled):
    """prepare(): loads the files of a spec (train, probe files, drift prompts), triages everything once
    (or runs the closed-book check when triage is disabled) and splits."""
    import json

    from tuneguard_trainer.triage import prepare

    facts = load_examples("bundled://facts")
    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    qa = lambda es: [{"question": e.question, "answers": e.answers, "relation": e.relation} for e in es]
    spec = api.FineTuneJobSpec(
        model={"uri": "/models/x"},
        datasets={"train": write("train.jsonl", qa(facts[:40]) + qa(facts[:2])),
                  "probes": {"unknown": write("unknown.jsonl", qa(facts[300:310]))}},
        method={"type": "sft"},
        triage={"enabled": enabled, "prompts": 1, "shots": 2, "samples": 1, "unknownPolicy": "abstain"},
        formatStage={"enabled": enabled},  # the stage needs triage's labels
        evaluation={"driftPrompts": write("drift.jsonl", [{"prompt": "Hello"}])},
    )
    splits, result = prepare(tiny_model, tiny_tokenizer, spec, seed=0, progress=False)
    assert result.slick is enabled and splits.slick is enabled
    assert splits.drift_prompts == ["Hello"]
    assert any("duplicate" in n for n in splits.notes)
    # the tiny random model knows nothing: everything is Unknown; the unknown probe is the file's
    assert {e.id for e in splits.unknown_probe} == {f"unknown.jsonl:{i}" for i in range(1, 11)}
    assert len(splits.train) == 40
    if enabled:
        assert splits.counts["relabelled"] == 40 and not splits.new_facts
        assert {e.target for e in splits.train} == {"I don't know"}
    else:  # no Unknown policy without a triage
        assert splits.counts["relabelled"] == 0 and len(splits.new_facts) == 40
        assert all(e.target == e.answers[0] for e in splits.train)


def test_plain_format_without_chat_template():
    """A tokenizer without a chat template gets 'Q: ...\\nA:' prompts; a newline or EOS ends an answer."""
    from .conftest import make_tokenizer

    tok = make_tokenizer(chat=False)
    fmt = PromptFormat(tok)
    assert not fmt.chat and tok.eos_token_id in fmt.stop_ids
    ex = QAExample(id="a", question="What is the capital of France?", answers=["Paris"])
    shot = QAExample(id="b", question="What is the capital of Italy?", answers=["Rome"])
    assert tok.decode(fmt.prompt_ids(ex, [shot])) == \
        "Q: What is the capital of Italy?\nA: Rome\n\nQ: What is the capital of France?\nA:"
    nl = tok("\n", add_special_tokens=False)["input_ids"][0]
    assert nl in fmt.stop_ids
    assert fmt.decode_answer(fmt.answer_ids("Paris") + [nl] + fmt.answer_ids("Q")) == "Paris"
    [f] = encode_for_training(tok, [ex], 64)
    assert f["labels"][-1] == tok.eos_token_id
