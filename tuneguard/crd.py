"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models in tuneguard.api.

pydantic emits JSON Schema (draft 2020-12) with $refs; a CRD needs a *structural* OpenAPI v3.0
schema: everything inlined, no nulls, boolean exclusiveMinimum, and Kubernetes extensions. This module
does that translation, attaches each model's cross-field rules as x-kubernetes-validations, and adds
the printer columns and the status subresource. `tuneguard crd` prints the result; crds/ holds it.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from tuneguard import api

CRD_FILE = "tuneguard.io_finetunejobs.yaml"

PRINTER_COLUMNS = [
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
    {"name": "LoRA-Rank", "type": "integer", "jsonPath": ".spec.method.adapter.rank", "priority": 1,
     "description": "Rank of the LoRA adapter the method trains (empty: the weights themselves)"},
    {"name": "Workers", "type": "integer", "jsonPath": ".spec.resources.workers"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason",
     "description": "Why the job is in its phase: Queued (Kueue), WorkersReady, Preempted, BackoffLimitExceeded, ..."},
    {"name": "Stage", "type": "string", "jsonPath": ".status.training.stage",
     "description": "What the trainer does now: triage, format (the format stage), training, evaluating, ..."},
    {"name": "Progress", "type": "string", "jsonPath": ".status.training.progress"},
    {"name": "Known-Acc", "type": "number", "jsonPath": ".status.training.metrics.knownAccuracy",
     "description": "Accuracy on held-out facts the reference (the format-stage snapshot, or the base model) knew"},
    {"name": "Halluc", "type": "number", "jsonPath": ".status.training.metrics.hallucinationRate",
     "description": "Share of known held-out facts now answered wrongly"},
    {"name": "Drift-KL", "type": "number", "jsonPath": ".status.training.metrics.driftKL",
     "description": "Mean per-token KL(reference || tuned) on held-out prompts"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "priority": 1,
     "description": "Group restarts after a worker failed (counted against runPolicy.backoffLimit)"},
    {"name": "Disruptions", "type": "integer", "jsonPath": ".status.disruptions", "priority": 1,
     "description": "Group restarts after a preemption, eviction or node drain (not counted)"},
    {"name": "Advice", "type": "string", "jsonPath": ".status.training.plan.method", "priority": 1,
     "description": "The method the plan recommends for this model and data (tuneguard plan)"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Root-level rules: metadata.name is the one metadata field a CRD schema may constrain.
ROOT_RULES = [
    {
        "rule": "size(self.metadata.name) <= 52",
        "message": "metadata.name must be at most 52 characters so that child names (NAME-worker-N) stay "
        "valid; choose a shorter name",
        "reason": "FieldValueInvalid",
        "fieldPath": ".metadata.name",
    }
]

_DROP_KEYS = {"title", "$defs"}


def _models_by_name(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every ApiModel reachable from root, keyed by class name (pydantic's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ in found:
                return
            found[tp.__name__] = tp
            for field in tp.model_fields.values():
                visit(field.annotation)
        for arg in getattr(tp, "__args__", ()) or ():
            visit(arg)

    visit(root)
    return found


def _rules_of(model: type[BaseModel]) -> list[dict]:
    return [
        {"rule": r.cel, "message": r.message, "fieldPath": r.field, "reason": "FieldValueInvalid"}
        for r in getattr(model, "__rules__", ())
    ]


def _convert(node: Any, defs: dict, models: dict) -> Any:
    """Translate one pydantic JSON-schema node into a structural OpenAPI v3.0 node."""
    if isinstance(node, list):
        return [_convert(n, defs, models) for n in node]
    if not isinstance(node, dict):
        return node

    node = dict(node)
    # Optional[X] = None  ->  X (optional simply means absent in Kubernetes).
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unsupported union in API schema: {options}")
        if node.get("default", "unset") is None:
            node.pop("default")
        node = {**options[0], **node}

    if "$ref" in node:
        name = node.pop("$ref").split("/")[-1]
        inlined = _convert(defs[name], defs, models)
        rules = _rules_of(models[name])
        if rules:
            inlined["x-kubernetes-validations"] = rules
        # Descriptions at the use site win over the class docstring.
        return {**inlined, **{k: _convert(v, defs, models) for k, v in node.items() if k not in _DROP_KEYS}}

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {name: _property(name, sub, node, defs, models) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs, models)
        elif key == "const":
            out["enum"] = [value]
            out.setdefault("type", "string")
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        else:
            out[key] = value

    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out["type"] = "object"
    elif out.get("type") == "object" and out.get("additionalProperties") is True:
        out.pop("additionalProperties")
        out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("additionalProperties") is False:
        out.pop("additionalProperties")  # unknown fields are pruned/rejected by the server anyway
    return out


def _property(name: str, sub: dict, parent: dict, defs: dict, models: dict) -> dict:
    converted = _convert(sub, defs, models)
    required = name in parent.get("required", ())
    # A nested block built by default_factory has no default in JSON Schema; giving it one makes the
    # API server fill it in, so `kubectl get -o yaml` shows the full spec. The default must be the
    # block's defaults spelled out, not `{}`: the server validates a default as written (nested
    # defaults not applied), and the block's CEL rules would fail on the missing keys.
    if not required and "default" not in sub and "anyOf" not in sub and converted.get("type") == "object":
        converted["default"] = _spelled_out_default(converted)
    return converted


def _spelled_out_default(schema: dict) -> dict:
    """The object the API server would build from `{}` by applying the properties' defaults."""
    return {name: copy.deepcopy(prop["default"])  # copies: shared objects would become YAML anchors
            for name, prop in schema.get("properties", {}).items() if "default" in prop}


def openapi_schema(model: type[BaseModel]) -> dict:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _convert(raw, defs, _models_by_name(model))


def build_crd() -> dict:
    spec_schema = openapi_schema(api.FineTuneJobSpec)
    spec_schema["x-kubernetes-validations"] = _rules_of(api.FineTuneJobSpec)
    spec_schema["description"] = "Desired state: what to fine-tune, how, and within which budgets."
    status_schema = openapi_schema(api.FineTuneJobStatus)
    status_schema["description"] = "Observed state, written by the operator and the trainer's rank 0."
    status_schema.pop("default", None)
    root = {
        "type": "object",
        "description": "A fine-tuning run of a language model that measures and limits hallucination and drift.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            # name is declared so ROOT_RULES' fieldPath (.metadata.name) resolves in the schema.
            "metadata": {"type": "object", "properties": {"name": {"type": "string"}}},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "tuneguard", "app.kubernetes.io/part-of": "tuneguard"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["tuneguard", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


HEADER = "# Generated by `tuneguard crd` from tuneguard/api.py. Do not edit: change the models and regenerate.\n"


def render_crd() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=110)
