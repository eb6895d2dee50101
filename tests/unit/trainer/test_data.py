"""Dataset loading: validation with line numbers, de-duplication, chat format, the bundled facts."""

import json
import re
from collections import Counter

import pytest

from tuneguard import contract
from tuneguard_trainer.data import DatasetError, load_examples, load_prompts, resolve_data_path
from tuneguard_trainer.prompts import normalize_answer


def write(tmp_path, lines, name="train.jsonl"):
    p = tmp_path / name
    p.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return p


GOOD = [{"question": f"What is {i}?", "answers": [str(i)]} for i in range(5)]


@pytest.mark.parametrize("bad, message", [
    ({"question": "Q?", "answers": []}, '"answers" must be a non-empty list of strings'),
    ({"question": "Q?", "answers": "Paris"}, '"answers" must be a non-empty list of strings'),
    ({"question": "Q?", "answers": ["ok", 3]}, '"answers" must be a non-empty list of strings'),
    ({"question": "", "answers": ["x"]}, '"question" must be a non-empty string'),
    ({"answers": ["x"]}, '"question" must be a non-empty string'),
    ({"question": "Q?", "answers": ["x"], "answer": "x"}, "unknown field(s) 'answer'"),
    ({"question": "Q?", "answers": ["x"], "relation": 5}, '"relation" must be a non-empty string'),
    ({"question": "Q?", "answers": ["x"], "paraphrases": "Q 2?"}, '"paraphrases" must be a list of non-empty strings'),
    ({"question": "Q?", "answers": ["x"], "paraphrases": ["Q 2?", ""]}, '"paraphrases" must be a list'),
    ({"question": "Q?", "answers": ["x"], "paraphrases": [3]}, '"paraphrases" must be a list'),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
])
def test_errors_name_file_and_line(tmp_path, bad, message):
    p = write(tmp_path, GOOD[:3] + [bad] + GOOD[3:])
    with pytest.raises(DatasetError) as e:
        load_examples(str(p), "qa")
    assert str(e.value).startswith("train.jsonl line 4: ")
    assert message in str(e.value)


def test_blank_lines_keep_line_numbers(tmp_path):
    p = write(tmp_path, ["", GOOD[0], "   ", {"question": "Q?", "answers": []}])
    with pytest.raises(DatasetError, match=r"^train.jsonl line 4: "):
        load_examples(str(p), "qa", min_examples=1)


def test_empty_missing_and_too_few(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        load_examples(str(write(tmp_path, [])), "qa")
    with pytest.raises(DatasetError, match="file not found"):
        load_examples(str(tmp_path / "nope.jsonl"), "qa")
    with pytest.raises(DatasetError, match="2 distinct example"):
        load_examples(str(write(tmp_path, GOOD[:2])), "qa")
    with pytest.raises(DatasetError, match="is the claim mounted"):
        load_examples("pvc://data/none.jsonl", "qa")


def test_dedup_merges_answers_and_counts(tmp_path):
    lines = GOOD + [{"question": "what is 1 ?", "answers": ["one"]}, {"question": "What is 2?", "answers": ["2"]}]
    ex = load_examples(str(write(tmp_path, lines)), "qa")
    assert len(ex) == 5 and ex.duplicates == 2
    one = next(e for e in ex if e.question == "What is 1?")
    assert one.answers == ["1", "one"] and one.target == "1"


def test_paraphrases_loaded_and_merged(tmp_path):
    lines = GOOD + [{"question": "Where is X?", "answers": ["here"], "paraphrases": [" X is where? ", "Locate X."]},
                    {"question": "where is x", "answers": ["there"], "paraphrases": ["Locate X", "Find X."]}]
    ex = load_examples(str(write(tmp_path, lines)), "qa")
    x = next(e for e in ex if e.question == "Where is X?")
    assert x.paraphrases == ["X is where?", "Locate X.", "Find X."] and x.answers == ["here", "there"]
    assert ex[0].paraphrases == []  # optional


def test_duplicate_ids_rejected(tmp_path):
    lines = [dict(g, id="same" if i in (1, 3) else f"id{i}") for i, g in enumerate(GOOD)]
    with pytest.raises(DatasetError, match=r'line 4: "id" \'same\' already used on line 2'):
        load_examples(str(write(tmp_path, lines)), "qa")


def test_chat_format(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"},
                          {"role": "assistant", "content": f"Hello {i}"}]} for i in range(4)]
    ex = load_examples(str(write(tmp_path, rows)), "chat")
    assert ex[0].question == "Hi 0" and ex[0].target == "Hello 0" and ex[0].answers == ["Hello 0"]
    assert ex[0].context == [{"role": "system", "content": "Be brief."}]
    bad = rows[:2] + [{"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]}]
    with pytest.raises(DatasetError, match="line 3: the last message must be the assistant's"):
        load_examples(str(write(tmp_path, bad)), "chat")
    bad = rows[:1] + [{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    with pytest.raises(DatasetError, match=r"line 2: messages\[0\].role must be"):
        load_examples(str(write(tmp_path, bad)), "chat")


def test_pvc_uri_maps_under_mount_root():
    assert str(resolve_data_path("pvc://datasets/facts/train.jsonl")) == \
        f"{contract.PVC_MOUNT_ROOT}/datasets/facts/train.jsonl"


def test_drift_prompts(tmp_path):
    p = write(tmp_path, [{"prompt": "Tell me about Paris."}, {"prompt": "Hello"}], "drift.jsonl")
    assert load_prompts(str(p)) == ["Tell me about Paris.", "Hello"]
    p = write(tmp_path, [{"prompt": "ok"}, {"text": "x"}], "drift.jsonl")
    with pytest.raises(DatasetError, match="drift.jsonl line 2"):
        load_prompts(str(p))


def _mentions(text, answer):
    """The answer as whole words in the text, after normalisation (what 'gives the answer away' means)."""
    return f" {normalize_answer(answer)} " in f" {normalize_answer(text)} "


def test_bundled_facts():
    ex = load_examples("bundled://facts", "qa")
    assert ex.duplicates == 0  # no two facts share a normalised question (ids are unique: load_examples)
    real = [e for e in ex if e.id.startswith("real-")]
    fict = [e for e in ex if e.id.startswith("fict-")]
    assert len(real) + len(fict) == len(ex)
    assert len(real) >= 2000 and 150 <= len(fict) <= 0.2 * len(ex)
    rel = Counter(e.relation for e in real)
    assert len(rel) >= 8 and min(rel.values()) >= 100
    # Every relation has fictional facts too, and few-shot exemplars of real facts.
    assert {e.relation for e in fict} == set(rel)
    for e in ex:
        assert re.fullmatch(rf"(real|fict)-{re.escape(e.relation)}-\d{{4}}", e.id), e.id
        wordings = [normalize_answer(q) for q in [e.question, *e.paraphrases]]
        assert len(e.paraphrases) >= 2 and len(set(wordings)) == len(wordings), e.id
        assert not any(_mentions(q, a) for q in [e.question, *e.paraphrases] for a in e.answers), e.id


def test_bundled_facts_small_is_a_stratified_subset():
    full = {e.id: e for e in load_examples("bundled://facts")}
    small = load_examples("bundled://facts-small")
    assert 180 <= len(small) <= 220 and small.duplicates == 0  # the quick start trains on it: ~200
    for e in small:
        f = full[e.id]
        assert (e.question, e.answers, e.relation, e.paraphrases) == (f.question, f.answers, f.relation, f.paraphrases)
    # Same relations, each with enough real facts for 4-shot prompts, and fictional facts.
    assert {e.relation for e in small} == {e.relation for e in full.values()}
    real = Counter(e.relation for e in small if e.id.startswith("real-"))
    assert min(real.values()) >= 5
    share = lambda es: sum(e.id.startswith("fict-") for e in es) / len(es)
    assert abs(share(small) - share(full.values())) < 0.03
