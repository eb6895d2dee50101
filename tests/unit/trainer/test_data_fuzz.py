"""Datasets fuzzed (hypothesis): a file of valid qa lines with one line broken in a generated way either loads
(the break was valid data) or stops with a DatasetError naming that line, never another exception."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings, strategies as st

from tuneguard_trainer.data import DatasetError, load_examples

GOOD = [{"question": f"What is the capital of country {i}?", "answers": [f"City {i}"], "relation": "capital"}
        for i in range(8)]

TEXT = st.text(min_size=0, max_size=30)
ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), TEXT,
                st.lists(st.one_of(TEXT, st.integers()), max_size=3), st.dictionaries(TEXT, st.integers(), max_size=2))


@st.composite
def broken_line(draw) -> tuple[bytes, bool]:
    """(the line's bytes, whether it is valid data)."""
    kind = draw(st.sampled_from(["field", "extra", "drop", "json", "bytes", "non-object", "huge", "nul"]))
    obj = {"question": "Which river flows through city X?", "answers": ["The X"], "relation": "river"}
    if kind == "field":  # a field of the wrong type or empty
        obj[draw(st.sampled_from(["question", "answers", "relation", "paraphrases", "id"]))] = draw(ANY)
    elif kind == "extra":
        obj[draw(TEXT.filter(lambda k: k not in obj))] = 1
    elif kind == "drop":
        del obj[draw(st.sampled_from(["question", "answers"]))]
    elif kind == "json":
        text = json.dumps(obj)
        return text[: draw(st.integers(1, len(text) - 1))].encode(), False  # truncated
    elif kind == "bytes":  # not UTF-8
        return json.dumps(obj).encode()[:-2] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + b'"}', False
    elif kind == "non-object":
        return json.dumps(draw(st.one_of(st.lists(st.integers(), max_size=2), st.integers(), TEXT))).encode(), False
    elif kind == "huge":  # a 2 MB question is valid data
        obj["question"] = "Which " + "very " * 400_000 + "long question?"
    elif kind == "nul":
        obj["question"] = "Which\x00 river?"
    valid = _valid(obj)
    return json.dumps(obj).encode(), valid


def _valid(obj) -> bool:
    ok_str = lambda v: isinstance(v, str) and bool(v.strip())  # noqa: E731
    return (set(obj) <= {"question", "answers", "relation", "id", "paraphrases"} and ok_str(obj.get("question"))
            and isinstance(obj.get("answers"), list) and bool(obj["answers"]) and all(map(ok_str, obj["answers"]))
            and (obj.get("relation") is None or ok_str(obj["relation"]))
            and (isinstance(obj.get("paraphrases", []), list) and all(map(ok_str, obj.get("paraphrases", []))))
            and ("id" not in obj or ok_str(obj["id"])))


@settings(max_examples=int(os.environ.get("TUNEGUARD_FUZZ_DATASETS", "300")), deadline=None,
          derandomize=os.environ.get("TUNEGUARD_FUZZ_RANDOM") != "1", database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(broken=broken_line(), at=st.integers(0, len(GOOD)))
def test_a_broken_line_is_named_or_loads(tmp_path, broken, at):
    line, valid = broken
    lines = [json.dumps(o).encode() for o in GOOD]
    lines.insert(at, line)
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        examples = load_examples(str(path))
    except DatasetError as e:
        assert not valid, f"valid data refused: {e}"
        assert f"train.jsonl line {at + 1}:" in str(e), str(e)
        return
    assert valid, f"line {at + 1} ({line[:80]!r}) was accepted"
    assert len(examples) == len(GOOD) + 1


def test_a_byte_order_mark_is_not_data(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(json.dumps(o).encode() for o in GOOD) + b"\n")
    assert len(load_examples(str(path))) == len(GOOD)
