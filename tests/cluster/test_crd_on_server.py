"""The generated CRD against the real API server: it installs, the examples pass its schema, and the
bad manifests whose rule a schema can express are refused with a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.bad_manifests import BAD_CASES, bad_job, valid_job

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300, func_only=True)]

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
SERVER_CASES = [c for c in BAD_CASES if c.server]


def apply(cluster, namespace: str, doc: dict, check: bool = True):
    """kubectl apply --server-side: the API server validates (schema, CEL rules, unknown fields)."""
    return cluster.kubectl("apply", "--server-side", "--field-manager=tuneguard-tests", "-n", namespace,
                           "-f", "-", input=yaml.safe_dump(doc), check=check)


def test_crd_is_established(cluster, crd_installed):
    crd = cluster.kubectl("get", "crd", crd_installed, "-o",
                          "jsonpath={.status.conditions[?(@.type=='Established')].status}"
                          "/{.status.conditions[?(@.type=='NamesAccepted')].status}").stdout
    assert crd == "True/True"
    resources = cluster.kubectl("api-resources", "--api-group=tuneguard.io", "-o", "name").stdout.split()
    assert resources == ["finetunejobs.tuneguard.io"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_is_accepted(cluster, crd_installed, module_namespace, example):
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = module_namespace  # the examples name `ml-team`
        done = apply(cluster, module_namespace, doc)
        assert "serverside-applied" in done.stdout, done.stdout
        name = doc["metadata"]["name"]
        stored = yaml.safe_load(cluster.kubectl("get", "ftj", name, "-n", module_namespace, "-o", "yaml").stdout)
        assert stored["spec"]["method"]["type"] == doc["spec"]["method"]["type"]


def test_valid_job_is_accepted_and_defaulted_like_the_models(cluster, crd_installed, module_namespace):
    """The server fills in the schema's defaults; they must be the pydantic models' (one source)."""
    from tuneguard import api

    doc = valid_job("the-good-one")
    apply(cluster, module_namespace, doc)
    # JSON, not YAML: PyYAML reads kubectl's `1e-05` as a string
    stored = json.loads(cluster.kubectl("get", "ftj", "the-good-one", "-n", module_namespace,
                                        "-o", "json").stdout)["spec"]
    models = api.FineTuneJob.model_validate(doc).spec.wire()
    for block in ("formatStage", "leakage", "triage", "training", "evaluation", "guardrails"):
        assert stored[block] == models[block], block
    assert stored["datasets"]["holdoutFraction"] == models["datasets"]["holdoutFraction"]


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c.name for c in SERVER_CASES])
def test_bad_manifest_is_rejected_naming_the_field(cluster, crd_installed, module_namespace, case):
    done = apply(cluster, module_namespace, bad_job(case), check=False)
    assert done.returncode != 0, f"the API server accepted {case.name}: {done.stdout}"
    message = done.stderr
    # Refused by the API server, not by kubectl: kubectl prints a server's Invalid status as
    # `The FineTuneJob "x" is invalid: ...` and any other server error as `Error from server...`.
    assert " is invalid: " in message or message.startswith("Error from server"), message
    # The server writes paths as spec.a.b (schema and CEL errors) or .spec.a.b (apply's field errors).
    assert case.field in message, f"{case.field} not named in: {message}"
