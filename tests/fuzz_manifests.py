"""FineTuneJob manifests generated around the valid examples (hypothesis), for the test that the offline
validator and the real API server give the same verdict on each: accept both, or reject both naming the same
field.

The fields and their constraints come from the API models themselves (tuneguard.api), so a new field is fuzzed
without touching this file. A manifest is a valid example with one to three mutations: a field set to a value
of its own type (in range, on a bound, past it), of another type, or null; a field deleted; an unknown field
added.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from hypothesis import strategies as st
from pydantic import BaseModel

from tests.bad_manifests import valid_job
from tuneguard import api
from tuneguard.validation import InvalidManifest, parse_job

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@dataclass(frozen=True)
class Leaf:
    path: tuple[str, ...]  # wire names from the manifest's root, e.g. ("spec", "training", "batchSize")
    kind: Any  # the annotation without Optional
    optional: bool
    bounds: tuple  # annotated_types constraints (Ge, Gt, Le, Lt, ...)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def catalogue(model: type[BaseModel] = api.FineTuneJobSpec, prefix: tuple[str, ...] = ("spec",)):
    """(objects, leaves): every object path and every leaf field of the spec, with its type and bounds."""
    objects, leaves = [prefix], []
    for name, f in model.model_fields.items():
        path = prefix + (f.alias or name,)
        tp, optional = _strip_optional(f.annotation)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            o, l_ = catalogue(tp, path)
            objects += o
            leaves += l_
        else:
            leaves.append(Leaf(path, tp, optional or not f.is_required(), tuple(f.metadata)))
    return objects, leaves


OBJECTS, LEAVES = catalogue()
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=False, allow_infinity=False),
                      st.text(max_size=12), st.lists(st.integers(0, 9), max_size=3),
                      st.dictionaries(st.sampled_from(["a", "enabled", "x"]), st.integers(0, 3), max_size=2))


def _bound_values(leaf: Leaf) -> list:
    out = []
    for b in leaf.bounds:
        for attr in ("ge", "gt", "le", "lt"):
            v = getattr(b, attr, None)
            if v is not None:
                out += [v, v - 1, v + 1] if isinstance(v, int) else [v, v - 1e-3, v + 1e-3, v * 2]
    return out


def value_for(leaf: Leaf) -> st.SearchStrategy:
    """Values of the leaf's own type (with its bounds and their neighbours), strings of numbers, anything."""
    kind, own = leaf.kind, []
    origin = typing.get_origin(kind)
    if origin is Literal:
        own = [st.sampled_from(typing.get_args(kind)), st.sampled_from(["", "Sft", "none"])]
    elif kind is bool:
        own = [st.booleans(), st.sampled_from(["true", 1, 0])]
    elif kind is int:
        own = [st.integers(-5, 2000), st.sampled_from(_bound_values(leaf) or [0]), st.sampled_from([2.0, 2.5, "8"])]
    elif kind is float:
        own = [st.floats(-1, 200, allow_nan=False), st.integers(0, 5),
               st.sampled_from(_bound_values(leaf) or [0.0]), st.sampled_from(["1e-4", "0.5"])]
    elif kind is str:
        own = [st.sampled_from(["bundled://facts", "/data/x.jsonl", "pvc://claim/x", "hf://a/b", "UPPER", "a b"]),
               st.text(max_size=20)]
    elif origin is list:
        own = [st.lists(st.sampled_from(["q_proj", "self_attn", "(x", "", ".*"]), max_size=3)]
    return st.one_of(*own, ANY_VALUE) if own else ANY_VALUE


def _get_parent(doc: dict, path: tuple[str, ...], create: bool) -> Optional[dict]:
    node = doc
    for p in path[:-1]:
        nxt = node.get(p) if isinstance(node, dict) else None
        if not isinstance(nxt, dict):
            if not create:
                return None
            nxt = node[p] = {}
        node = nxt
    return node


@st.composite
def mutation(draw) -> tuple[str, tuple[str, ...], Any]:
    op = draw(st.sampled_from(["set", "set", "set", "delete", "unknown"]))
    if op == "unknown":
        return op, draw(st.sampled_from(OBJECTS)) + (draw(st.sampled_from(["extra", "learningRat", "type_"])),), 1
    leaf = draw(st.sampled_from(LEAVES))
    return op, leaf.path, (draw(value_for(leaf)) if op == "set" else None)


def apply(doc: dict, m: tuple[str, tuple[str, ...], Any]) -> None:
    op, path, value = m
    parent = _get_parent(doc, path, create=op != "delete")
    if parent is None:
        return
    if op == "delete":
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value


def bases() -> list[dict]:
    docs = [valid_job("fuzz")]
    for p in EXAMPLES:
        docs += [d for d in yaml.safe_load_all(p.read_text()) if d]
    for d in docs:
        d["metadata"] = {"name": "fuzz"}
    return docs


BASES = bases()


@st.composite
def manifests(draw) -> tuple[dict, list]:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    ms = draw(st.lists(mutation(), min_size=1, max_size=3))
    for m in ms:
        apply(doc, m)
    return doc, ms


# What only the offline validator checks (the API server has no regular-expression syntax check): a manifest
# rejected for these alone is accepted by the server by design.
OFFLINE_ONLY = ("is not a valid regular expression",)


def offline_verdict(doc: dict) -> tuple[bool, list[str], bool]:
    """(accepted, the field paths of the errors, rejected only for what the server does not check)."""
    try:
        parse_job(doc)
        return True, [], False
    except InvalidManifest as e:
        only = all(any(o in err.message for o in OFFLINE_ONLY) for err in e.errors)
        return False, [err.path for err in e.errors], only
