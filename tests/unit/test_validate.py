"""Offline validation: examples pass, every bad manifest fails with a message naming its field."""

from pathlib import Path

import pytest
import yaml

from tests.bad_manifests import BAD_CASES, bad_job, valid_job
from tuneguard.cli import main
from tuneguard.validation import InvalidManifest, load_job, parse_job

EXAMPLES = sorted(Path(__file__).resolve().parents[2].joinpath("examples").glob("*.yaml"))


def test_there_are_examples_for_every_method():
    methods = {parse_job(yaml.safe_load(p.read_text())).spec.method.type for p in EXAMPLES}
    assert methods == {"sft", "self-distill", "freeze"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


def test_valid_job_gets_defaults():
    job = parse_job(valid_job())
    assert job.spec.training.learning_rate == 1e-5
    assert job.spec.method.type == "sft"
    assert job.spec.deepspeed.zero_stage == 2


def test_enough_distinct_bad_cases():
    assert len({c.name for c in BAD_CASES}) >= 15


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.name)
def test_bad_manifest_names_its_field(case):
    with pytest.raises(InvalidManifest) as info:
        parse_job(bad_job(case))
    paths = [e.path for e in info.value.errors]
    assert any(p == case.field or p.startswith(case.field + ".") for p in paths), (paths, str(info.value))
    # Every message says what to do, not only what is wrong.
    assert all(len(e.message) > 15 for e in info.value.errors)


@pytest.mark.parametrize("case", BAD_CASES[:5], ids=lambda c: c.name)
def test_cli_validate_exits_nonzero_and_prints_field(case, tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad_job(case)))
    assert main(["validate", str(f)]) == 1
    assert case.field in capsys.readouterr().err


def test_unknown_field_suggests_the_right_name():
    with pytest.raises(InvalidManifest) as info:
        parse_job(bad_job(next(c for c in BAD_CASES if c.name == "unknown-field")))
    assert "did you mean 'learningRate'" in str(info.value)


def test_multi_document_file(tmp_path, capsys):
    f = tmp_path / "two.yaml"
    f.write_text(yaml.safe_dump(valid_job("a")) + "---\n" + yaml.safe_dump(valid_job("b")))
    assert main(["validate", str(f)]) == 0
    assert capsys.readouterr().out.count("ok") == 2


def test_not_yaml(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("spec: [unclosed")
    assert main(["validate", str(f)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_null_integral_numbers_and_yaml_floats_read_as_the_server_reads_them(tmp_path):
    """tests/cluster/test_fuzz_manifests.py found each of these: the API server prunes a null (and defaults the
    field), takes 2.0 for an integer, and kubectl reads 1e-4 as a number; the offline validator does the same."""
    doc = valid_job()
    doc["spec"]["triage"] = {"enabled": None, "prompts": 3.0}
    doc["spec"]["deepspeed"] = {"config": {"zero_optimization": {"reduce_bucket_size": None}}}
    job = parse_job(doc)
    assert job.spec.triage.enabled is True and job.spec.triage.prompts == 3 and isinstance(job.spec.triage.prompts, int)
    assert job.spec.deepspeed.config == {"zero_optimization": {"reduce_bucket_size": None}}  # kept as written
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(valid_job()).replace("spec:\n", "spec:\n  training: {learningRate: 1e-4}\n", 1))
    assert load_job(path).spec.training.learning_rate == 1e-4
