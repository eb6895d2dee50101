"""The committed CRD is exactly what the models generate, and it is a structural schema."""

from pathlib import Path

import yaml

from tuneguard.crd import CRD_FILE, build_crd, render_crd

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_models():
    committed = (ROOT / "crds" / CRD_FILE).read_text()
    assert committed == render_crd(), "crds/ is stale: run `make generate`"


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if not isinstance(node, dict):
            continue
        assert not {"$ref", "anyOf", "allOf", "oneOf", "const", "title", "$defs"} & set(node), path
        if path.endswith(".properties") or path.endswith("x-kubernetes-validations"):
            continue
        if "properties" in node or "items" in node:
            assert "type" in node, f"{path} has no type"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True, path


def test_printer_columns_and_short_name():
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    for col in ("Method", "Phase", "Stage", "Progress", "Halluc", "Drift-KL", "Age"):
        assert col in names
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert version["subresources"] == {"status": {}}


def test_defaults_and_rules_reach_the_schema():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["training"]["properties"]["learningRate"]["default"] == 1e-5
    # A block's default is spelled out: the API server validates defaults (CEL rules included) as written.
    training = spec["properties"]["training"]
    assert training["default"] == {k: p["default"] for k, p in training["properties"].items() if "default" in p}
    assert training["default"]["learningRate"] == 1e-5
    assert spec["properties"]["resources"]["default"]["workers"] == 1
    method_rules = [r["rule"] for r in spec["properties"]["method"]["x-kubernetes-validations"]]
    assert any("selfDistill" in r for r in method_rules)
    immutable = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.model == oldSelf.model" in immutable
    assert not any("guardrails" in r or "runPolicy" in r for r in immutable), "guardrails and suspend stay editable"
    assert yaml.safe_load(render_crd())["kind"] == "CustomResourceDefinition"
