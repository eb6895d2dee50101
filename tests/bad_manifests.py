"""Bad FineTuneJob manifests: each must be rejected offline (tuneguard validate) and, where the CRD
schema can express the rule, by the real API server. Shared by the unit and the cluster tests."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable


def valid_job(name: str = "good") -> dict[str, Any]:
    return {
        "apiVersion": "tuneguard.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "bundled://smollm2-135m-instruct"},
            "datasets": {"train": "bundled://facts"},
            "method": {"type": "sft"},
            "resources": {"workers": 1, "gpusPerWorker": 1},
        },
    }


@dataclass(frozen=True)
class BadCase:
    name: str
    mutate: Callable[[dict], None]
    field: str  # the field path the message must name
    server: bool = True  # the API server's schema catches it too


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, leaf = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, leaf = path.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[leaf]
    return mutate


BAD_CASES: list[BadCase] = [
    BadCase("unknown-method", _set("spec.method.type", "lora"), "spec.method.type"),
    BadCase("negative-learning-rate", _set("spec.training.learningRate", -0.001), "spec.training.learningRate"),
    BadCase("zero-stage-5", _set("spec.deepspeed.zeroStage", 5), "spec.deepspeed.zeroStage"),
    BadCase("self-distill-on-sft", _set("spec.method.selfDistill", {"lambda": 1.0}), "spec.method.selfDistill"),
    BadCase("freeze-without-patterns",
            _set("spec.method", {"type": "freeze", "freeze": {"trainablePatterns": []}}),
            "spec.method.freeze.trainablePatterns"),
    BadCase("freeze-without-block", _set("spec.method", {"type": "freeze"}), "spec.method.freeze"),
    BadCase("zero-workers", _set("spec.resources.workers", 0), "spec.resources.workers"),
    BadCase("unknown-field", _set("spec.training.learningRat", 1e-5), "spec.training.learningRat"),
    BadCase("missing-model", _delete("spec.model"), "spec.model"),
    BadCase("malformed-model-uri", _set("spec.model.uri", "huggingface:SmolLM2"), "spec.model.uri"),
    BadCase("unknown-bundled-model", _set("spec.model.uri", "bundled://llama-70b"), "spec.model.uri"),
    BadCase("negative-batch-size", _set("spec.training.batchSize", -8), "spec.training.batchSize"),
    BadCase("unknown-precision", _set("spec.deepspeed.precision", "fp8"), "spec.deepspeed.precision"),
    BadCase("unknown-unknown-policy", _set("spec.triage.unknownPolicy", "ignore"), "spec.triage.unknownPolicy"),
    BadCase("unknown-guardrail-action", _set("spec.guardrails.action", "panic"), "spec.guardrails.action"),
    BadCase("hallucination-budget-above-one", _set("spec.guardrails.maxHallucinationIncrease", 1.5),
            "spec.guardrails.maxHallucinationIncrease"),
    BadCase("zero-temperature", _set("spec.method", {"type": "self-distill", "selfDistill": {"temperature": 0}}),
            "spec.method.selfDistill.temperature"),
    BadCase("freeze-preset-and-patterns",
            _set("spec.method", {"type": "freeze", "freeze": {"preset": "mlp-only", "trainablePatterns": ["attn"]}}),
            "spec.method.freeze.preset"),
    BadCase("top-layers-without-count",
            _set("spec.method", {"type": "freeze", "freeze": {"preset": "top-layers"}}),
            "spec.method.freeze.topLayers"),
    BadCase("offload-with-zero-0", _set("spec.deepspeed", {"zeroStage": 0, "offloadOptimizer": True}),
            "spec.deepspeed.offloadOptimizer"),
    BadCase("credentials-on-bundled-model",
            _set("spec.model.credentialsSecret", {"name": "hf-token"}), "spec.model.credentialsSecret"),
    BadCase("too-many-gpus", _set("spec.resources.gpusPerWorker", 64), "spec.resources.gpusPerWorker"),
    BadCase("unknown-dataset-format", _set("spec.datasets.format", "csv"), "spec.datasets.format"),
    BadCase("negative-backoff-limit", _set("spec.runPolicy.backoffLimit", -1), "spec.runPolicy.backoffLimit"),
    BadCase("string-epochs", _set("spec.training.epochs", "many"), "spec.training.epochs"),
    # No coercion, as on the server: a quoted number is a string, 1 is not true.
    BadCase("quoted-batch-size", _set("spec.training.batchSize", "8"), "spec.training.batchSize"),
    BadCase("integer-as-boolean", _set("spec.triage.enabled", 1), "spec.triage.enabled"),
    BadCase("fractional-workers", _set("spec.resources.workers", 1.5), "spec.resources.workers"),
    BadCase("format-stage-without-triage", _set("spec.triage.enabled", False), "spec.formatStage.enabled"),
    BadCase("format-stage-teacher-without-the-stage",
            lambda d: (_set("spec.method", {"type": "self-distill"})(d), _set("spec.formatStage.enabled", False)(d)),
            "spec.method.selfDistill.teacher"),
    BadCase("unknown-teacher", _set("spec.method", {"type": "self-distill", "selfDistill": {"teacher": "gpt"}}),
            "spec.method.selfDistill.teacher"),
    BadCase("zero-format-epochs", _set("spec.formatStage.epochs", 0), "spec.formatStage.epochs"),
    BadCase("unknown-leakage-policy", _set("spec.leakage.policy", "ignore"), "spec.leakage.policy"),
    BadCase("zero-leakage-similarity", _set("spec.leakage.similarity", 0), "spec.leakage.similarity"),
    BadCase("leakage-similarity-above-one", _set("spec.leakage.similarity", 1.5), "spec.leakage.similarity"),
    BadCase("adapter-with-freeze",
            _set("spec.method", {"type": "freeze", "freeze": {"preset": "attention-only"}, "adapter": {"rank": 8}}),
            "spec.method.adapter"),
    BadCase("adapter-under-zero-3", lambda d: (_set("spec.method.adapter", {"rank": 8})(d),
                                               _set("spec.deepspeed.zeroStage", 3)(d)), "spec.deepspeed.zeroStage"),
    BadCase("adapter-rank-zero", _set("spec.method.adapter", {"rank": 0}), "spec.method.adapter.rank"),
    BadCase("adapter-targets-and-patterns",
            _set("spec.method.adapter", {"targets": "mlp", "targetPatterns": ["q_proj"]}),
            "spec.method.adapter.targetPatterns"),
    BadCase("adapter-unknown-targets", _set("spec.method.adapter", {"targets": "embeddings"}),
            "spec.method.adapter.targets"),
    BadCase("adapter-dropout-one", _set("spec.method.adapter", {"dropout": 1.0}), "spec.method.adapter.dropout"),
    BadCase("evaluation-sets-same-name", _set("spec.evaluation.sets", [{"name": "ours", "file": "/a.jsonl"},
                                                                    {"name": "ours", "file": "/b.jsonl"}]),
            "spec.evaluation.sets"),
    BadCase("evaluation-set-bad-name", _set("spec.evaluation.sets", [{"name": "Our Set", "file": "/a.jsonl"}]),
            "spec.evaluation.sets[0].name"),
    # Offline only: the API server does not check regular-expression syntax.
    BadCase("adapter-invalid-regex", _set("spec.method.adapter", {"targetPatterns": ["(q_proj"]}),
            "spec.method.adapter", server=False),
    BadCase("invalid-regex", _set("spec.method", {"type": "freeze", "freeze": {"trainablePatterns": ["(attn"]}}),
            "spec.method.freeze", server=False),
]


def bad_job(case: BadCase, name: str | None = None) -> dict:
    doc = copy.deepcopy(valid_job(name or f"bad-{case.name}"))
    case.mutate(doc)
    return doc
