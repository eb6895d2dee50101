"""The leakage check: exact and near duplicates of training questions among the probes, training
duplicates, and the three policies in the loop (refuse fails before training and writes nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneguard_trainer import data as data_mod, leakage
from tuneguard_trainer.local import run_local

from ._jobs import small_facts, tiny_model_dir, write_job
from .conftest import TRAINER_DATA

# A bundled paraphrase of the first city_country fact of small_facts ("In which country is the city of
# Shanghai?", answer China).
LEAK = {"id": "leak-1", "question": "Shanghai is a city in which country?", "answers": ["China"]}


def _ex(ex_id, question, answers, paraphrases=()):
    return data_mod.QAExample(id=ex_id, question=question, answers=list(answers), paraphrases=list(paraphrases))


def _leak():
    return _ex(LEAK["id"], LEAK["question"], LEAK["answers"])


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": tiny_model_dir(root), "data": small_facts(root, n_per_relation=3), "root": root}


@pytest.fixture(scope="module")
def train(assets):
    return data_mod.load_examples(str(assets["data"]))


def _fictional(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (TRAINER_DATA / "facts.jsonl").read_text().splitlines() if '"fict-' in line]
    return rows[:10 * n:10]


def test_paraphrase_with_the_same_answer_is_caught(train):
    target = next(e for e in train if e.question == "In which country is the city of Shanghai?")
    probes = {"unknown_probe": [_leak()] + [_ex(r["id"], r["question"], r["answers"], r["paraphrases"])
                                               for r in _fictional(3)]}
    rep = leakage.find_leaks(train, probes, threshold=0.8)
    assert [(p.kind, p.probe_id, p.train_id) for p in rep.pairs] == [("near", "leak-1", target.id)]
    assert rep.pairs[0].similarity >= 0.8
    assert rep.counts() == {"exact": 0, "near": 1, "train_duplicates": 0, "dropped": 0}
    # the same wording with an answer the training fact does not accept is no near duplicate
    other = leakage.find_leaks(train, {"unknown_probe": [_ex("x", LEAK["question"], ["Japan"])]}, 0.8)
    assert other.pairs == []
    # a probe's paraphrase is checked as well as its question
    via = leakage.find_leaks(train, {"known_probe": [_ex("p", "Where is Atlantis?", ["China"], [LEAK["question"]])]})
    assert [p.probe_text for p in via.pairs] == [LEAK["question"]]


def test_normalised_exact_duplicate_is_caught_whatever_the_answer(train):
    # case, full-width punctuation (NFKC), extra whitespace, an article
    probe = _ex("e", "IN WHICH  country is the city of Shanghai？", ["Atlantis"])
    rep = leakage.find_leaks(train, {"known_probe": [probe]})
    assert [(p.kind, p.similarity) for p in rep.pairs] == [("exact", 1.0)]
    assert rep.counts()["exact"] == 1 and rep.leaked == {"known_probe": ["e"]}
    assert leakage.normalize_question("What is THE capital of Côte d’Ivoire?") == \
        leakage.normalize_question("what is capital of côte d'ivoire")


def test_training_duplicates_are_reported(train):
    dup = _ex("dup", "in which country is the city of shanghai", ["China"])
    rep = leakage.find_leaks([*train, dup], {})
    assert [(p.probe_id, p.kind) for p in rep.train_pairs] == [("dup", "exact")]
    assert rep.counts()["train_duplicates"] == 1


def test_drop_removes_only_the_leaked_probes(train):
    from tuneguard_trainer.triage import Splits

    clean = _ex("clean", "Which country borders Atlantis?", ["Lemuria"])
    splits = Splits(train=list(train), known_probe=[clean], new_facts=[], unknown_probe=[_leak()],
                    drift_prompts=[])
    rep = leakage.check_splits(splits, 0.8)
    kept, dropped = leakage.drop_leaked(splits, rep)
    assert dropped == 1 and kept.unknown_probe == [] and kept.known_probe == [clean]
    assert splits.unknown_probe  # the input is not changed
    assert "leakage: dropped 1" in kept.notes[-1]
    assert "Shanghai is a city in which country?" in rep.describe()


# ----------------------------------------------------------------------------------------- the loop


def _job(tmp_path, assets, probes: list[dict], policy: str):
    probe_file = tmp_path / "unknown-probe.jsonl"
    probe_file.write_text("".join(json.dumps(r) + "\n" for r in probes))
    return write_job(tmp_path, model=assets["model"], data=assets["data"],
                     datasets={"probes": {"unknown": str(probe_file)}}, leakage={"policy": policy},
                     formatStage={"enabled": False})


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")} if d.exists() else {}


def test_refuse_fails_before_training_naming_the_pairs(tmp_path, assets, capsys):
    job = _job(tmp_path, assets, [LEAK] + _fictional(2), "refuse")
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 2
    err = capsys.readouterr().err
    assert "leakage: 1 probe example(s) leak" in err
    assert "leak-1 'Shanghai is a city in which country?'" in err and "real-city_country-0001" in err
    assert "spec.leakage.policy" in err
    assert not out.exists()  # no report, no checkpoint, no triage cache
    # an existing output directory stays untouched
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = _snapshot(out)
    assert run_local(job, out, "cpu") == 2
    assert _snapshot(out) == before


def test_drop_trains_without_the_leaked_probe(tmp_path, assets):
    out = tmp_path / "out"
    assert run_local(_job(tmp_path, assets, [LEAK] + _fictional(2), "drop"), out, "cpu") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["leakage"]["counts"] == {"exact": 0, "near": 1, "train_duplicates": 0, "dropped": 1}
    assert rep["leakage"]["policy"] == "drop" and rep["leakage"]["first_pairs"][0]["probe_id"] == "leak-1"
    assert rep["splits"]["unknown_probe"] == 2


def test_clean_job_passes_under_refuse(tmp_path, assets):
    out = tmp_path / "out"
    assert run_local(_job(tmp_path, assets, _fictional(3), "refuse"), out, "cpu") == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["leakage"]["counts"] == {"exact": 0, "near": 0, "train_duplicates": 0, "dropped": 0}
    assert rep["splits"]["unknown_probe"] == 3
    assert (out / "best-model" / "config.json").exists()


def test_the_speed_benchmark_runs_and_finds_what_it_planted(tmp_path, capsys):
    from bench import leakage_speed

    rels = leakage_speed.relation_templates()
    assert len(rels) == 9 and all(len(r["templates"]) == 3 and "{x}" in r["templates"][1] for r in rels.values())
    assert leakage_speed.main(["--train", "3000", "--probes", "80", "--repeats", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "leakage-speed.json").read_text())
    k = res["per_kind"]
    assert k["exact"]["found_exact"] == k["exact"]["planted"] == 20
    assert k["look-alike"]["found_exact"] + k["look-alike"]["found_near"] == 0
    assert k["clean"]["found_exact"] + k["clean"]["found_near"] == 0
    assert res["train_duplicates"]["found"] == res["train_duplicates"]["planted"] == 30
    assert (tmp_path / "leakage-speed.md").exists()


@pytest.mark.parametrize("policy,refused", [("refuse", True), ("drop", False), ("warn", False)])
def test_only_refuse_refuses(train, policy, refused):
    from tests.bad_manifests import valid_job
    from tuneguard.validation import parse_job
    from tuneguard_trainer import loop
    from tuneguard_trainer.triage import Splits

    doc = valid_job()
    doc["spec"]["leakage"] = {"policy": policy}
    spec = parse_job(doc).spec
    splits = Splits(train=list(train), known_probe=[], new_facts=[], unknown_probe=[_leak()], drift_prompts=[])
    rep, refusal = loop.check_leakage(splits, spec)
    assert len(rep.pairs) == 1 and bool(refusal) is refused
    clean = Splits(train=list(train), known_probe=[], new_facts=[], unknown_probe=[], drift_prompts=[])
    assert loop.check_leakage(clean, spec)[1] is None
