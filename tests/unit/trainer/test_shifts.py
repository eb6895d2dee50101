"""Shift tests (shifts.py): deterministic rewrites of the probe questions, and the evaluator's accuracy and
robustness gap per shift on hand-made answers; the robustness guardrail."""

from __future__ import annotations

import dataclasses

import pytest

from tuneguard import api
from tuneguard_trainer import guardrails, shifts
from tuneguard_trainer.data import QAExample, load_examples
from tuneguard_trainer.evaluation import Evaluator
from tuneguard_trainer.prompts import PromptFormat

from .conftest import Oracle
from .test_evaluation import _tail, splits_of

EX = QAExample(id="real-capital-0001", question="What is the capital of Andorra?", answers=["Andorra la Vella"],
               relation="capital", paraphrases=["Which city is the capital of Andorra?",
                                                "Name the capital city of Andorra."])


def test_paraphrases_come_from_the_facts_own_wordings_and_are_stable():
    got = shifts.paraphrase(EX, seed=0)
    assert got.question in EX.paraphrases and got.answers == EX.answers and got.id == EX.id
    assert shifts.paraphrase(EX, seed=0) == got  # every evaluation asks the same one
    assert {shifts.paraphrase(EX, seed=s).question for s in range(20)} == set(EX.paraphrases)
    assert shifts.paraphrase(dataclasses.replace(EX, paraphrases=[]), 0) is None


def test_noise_is_seeded_per_fact_and_changes_the_question_but_not_its_letters():
    facts = [dataclasses.replace(EX, id=f"f{i}") for i in range(60)]
    noisy = [shifts.noise(f, seed=7) for f in facts]
    assert noisy == [shifts.noise(f, seed=7) for f in facts]
    assert all(n.question != EX.question and n.answers == EX.answers for n in noisy)
    kinds = {"typo": 0, "lower": 0, "extra": 0}
    for n in noisy:
        if n.question == EX.question.lower():
            kinds["lower"] += 1
        elif sorted(n.question) == sorted(EX.question):
            kinds["typo"] += 1  # two letters swapped: the same letters
            assert n.question[0] == "W" and n.question.endswith("?")
        else:
            kinds["extra"] += 1
            assert "capital of Andorra" in n.question
    assert all(v >= 5 for v in kinds.values()), kinds


def test_an_unknown_shift_is_refused():
    with pytest.raises(ValueError, match="unknown shift 'rot13'"):
        shifts.shifted("rot13", EX, 0)


def test_the_evaluator_measures_each_shift_against_the_same_facts_asked_as_trained(tiny_tokenizer):
    """The base model answers the 5 known facts as asked (so the probe keeps all 5), 2 of them paraphrased and 1
    asked zero-shot (the other prompt format: no exemplars, the instruction in the question turn); the shifts
    ask the first 4."""
    tok = tiny_tokenizer
    fmt = PromptFormat(tok)
    caps = [e for e in load_examples("bundled://facts") if e.relation == "capital" and e.paraphrases]
    train, known = caps[:10], caps[10:15]
    say = lambda text: fmt.answer_ids(text) + [fmt.end_ids[0]]  # noqa: E731
    shots = Evaluator(tok, splits_of(train), Oracle({}, len(tok), 5), max_probe_size=50).shots_for
    out = {_tail(fmt, tok, e, shots(e)): say(e.answers[0]) for e in known}
    for e in known[:2]:
        p = shifts.paraphrase(e, seed=0)
        out[_tail(fmt, tok, p, shots(e))] = say(e.answers[0])
    out[_tail(fmt, tok, known[2], [])] = say(known[2].answers[0])
    base = Oracle(out, len(tok), tok.convert_tokens_to_ids("Q"))
    ev = Evaluator(tok, splits_of(train, known, new=train[:2]), base, max_probe_size=50,
                   shifts=shifts.SHIFTS, shift_size=4)
    assert ev.base_figures["known_accuracy"] == 1.0
    got = ev.last_shifts
    assert set(got) == set(shifts.SHIFTS)
    known_of = {s: got[s]["known"] for s in got}
    assert known_of["paraphrase"] == {"accuracy": 0.5, "unshifted_accuracy": 1.0, "gap": 0.5, "size": 4}
    assert known_of["noise"] == {"accuracy": 0.0, "unshifted_accuracy": 1.0, "gap": 1.0, "size": 4}
    assert known_of["format"] == {"accuracy": 0.25, "unshifted_accuracy": 1.0, "gap": 0.75, "size": 4}
    assert got["noise"]["new"] == {"accuracy": 0.0, "unshifted_accuracy": 0.0, "gap": 0.0, "size": 2}
    assert ev.decoding["shifts"] == list(shifts.SHIFTS) and ev.decoding["strategy"].startswith("greedy")
    # the same numbers for the same model asked again (seeded shifts)
    ev.evaluate(base)
    assert ev.last_shifts == got


def test_the_robustness_budget_is_the_largest_rise_of_a_known_gap_over_the_reference():
    ref = {"paraphrase": {"known": {"gap": 0.10}}, "noise": {"known": {"gap": 0.05}}}
    tuned = {"paraphrase": {"known": {"gap": 0.15}}, "noise": {"known": {"gap": 0.30}}}
    spec = api.GuardrailSpec(max_robustness_gap_increase=0.2)
    (b,) = guardrails.check({}, {}, spec, tuned, ref)
    assert (b.guardrail, b.shift, round(b.value, 3)) == ("robustness", "noise", 0.25)
    assert str(b) == "robustness gap under noise rose by 0.250 (> 0.200)"
    assert not guardrails.check({}, {}, api.GuardrailSpec(max_robustness_gap_increase=0.3), tuned, ref)
    assert not guardrails.check({}, {}, api.GuardrailSpec(), tuned, ref)  # no budget: no breach
