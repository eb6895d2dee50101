"""Offline validation of FineTuneJob manifests, with errors that name the field and the fix.

Used by `tuneguard validate`, by the trainer on its mounted config and by the operator before it
renders anything. The messages follow the form `spec.training.learningRate: <problem>; <fix>`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from tuneguard import api


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidManifest(ValueError):
    def __init__(self, source: str, errors: list[FieldError]):
        self.source = source
        self.errors = errors
        lines = "\n".join(f"  {e}" for e in errors)
        super().__init__(f"{source}: {len(errors)} error(s)\n{lines}")


def _model_at(loc: Iterable[Any]) -> type[BaseModel] | None:
    """The pydantic model that owns the last element of loc (to suggest field names)."""
    model: Any = api.FineTuneJob
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return model
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    for arg in getattr(tp, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return tp


def _wire_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


def _hint(err: dict) -> str:
    """Turn one pydantic error into 'problem; fix'."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    loc = err["loc"]
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        names = _wire_names(owner) if owner else []
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"allowed fields: {', '.join(names)}"
        return f"unknown field; remove it ({fix})"
    if kind == "missing":
        return "required field is missing; add it"
    if kind in ("literal_error", "enum"):
        return f"{got!r} is not allowed; use one of {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        return f"{got!r} is malformed; {api.PATTERN_HINTS.get(pattern, f'it must match {pattern}')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = {"greater_than": "> ", "greater_than_equal": ">= ", "less_than": "< ", "less_than_equal": "<= "}[kind]
        limit = next(iter(ctx.values()))
        return f"{got!r} is out of range; use a value {bound}{limit}"
    if kind in ("string_too_long", "too_long"):
        return f"too long; at most {ctx.get('max_length')} allowed"
    if kind in ("string_too_short", "too_short"):
        return f"too short; at least {ctx.get('min_length')} needed"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{got!r} has the wrong type; {err['msg'].lower()}"
    msg = err["msg"]
    return msg.removeprefix("Value error, ")


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _rule_field(err: dict) -> str:
    """A cross-field rule error points at the field the rule names, not at the owning object."""
    exc = (err.get("ctx") or {}).get("error")
    rule = getattr(exc, "rule", None)
    base = _path(err["loc"])
    if rule is None:
        return base
    return base + rule.field if base else rule.field.lstrip(".")


def _kept_as_written(model: type[BaseModel] = api.FineTuneJob, prefix: tuple = ()) -> set[tuple]:
    """The paths of the fields whose contents the CRD keeps as written (x-kubernetes-preserve-unknown-fields in
    the model's json_schema_extra): a null there is data, not an unset field."""
    out = set()
    for name, f in model.model_fields.items():
        path = prefix + (f.alias or name,)
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        if extra.get("x-kubernetes-preserve-unknown-fields"):
            out.add(path)
        sub = _unwrap(f.annotation)
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out |= _kept_as_written(sub, path)
    return out


_KEPT_AS_WRITTEN = _kept_as_written()


def as_the_server_reads(doc: Any, path: tuple = ()) -> Any:
    """The manifest as the API server reads it. No field of the CRD is nullable, so the server prunes a field set
    to null (then applies its default) instead of refusing it: null means unset here too. JSON has one number
    type, and the server's integer fields take 2.0: an integral number is an integer here too (float fields
    take integers)."""
    if isinstance(doc, float) and doc.is_integer() and abs(doc) < 2**53:  # beyond, not every integer is a float
        return int(doc)
    if isinstance(doc, list):
        return [as_the_server_reads(v, path) for v in doc]
    if not isinstance(doc, dict) or path in _KEPT_AS_WRITTEN:
        return doc
    return {k: as_the_server_reads(v, path + (k,)) for k, v in doc.items() if v is not None}


def parse_job(doc: Any, source: str = "<manifest>") -> api.FineTuneJob:
    """Validate one manifest document; raise InvalidManifest listing every problem."""
    if not isinstance(doc, dict):
        raise InvalidManifest(source, [FieldError("", "a FineTuneJob manifest must be a YAML mapping")])
    try:
        return api.FineTuneJob.model_validate(as_the_server_reads(doc))
    except ValidationError as e:
        errors = []
        for err in e.errors(include_url=False):
            path = _rule_field(err) if err["type"] == "value_error" else _path(err["loc"])
            errors.append(FieldError(path, _hint(err)))
        raise InvalidManifest(source, errors) from None


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where 1e-4 (no dot) is a string; kubectl reads YAML 1.2, where it is a number."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_documents(path: str | Path) -> list[tuple[str, Any]]:
    """All YAML documents of a file, each labelled 'file#index' for messages."""
    text = Path(path).read_text()
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Yaml12Loader) if d is not None]
    except yaml.YAMLError as e:
        raise InvalidManifest(str(path), [FieldError("", f"not valid YAML: {e}")]) from None
    return [(f"{path}#{i}" if len(docs) > 1 else str(path), d) for i, d in enumerate(docs)]


def load_job(path: str | Path) -> api.FineTuneJob:
    """The single FineTuneJob in a file (the trainer's mounted config, `tuneguard run`'s argument)."""
    docs = load_documents(path)
    if len(docs) != 1:
        raise InvalidManifest(str(path), [FieldError("", f"expected one FineTuneJob document, found {len(docs)}")])
    source, doc = docs[0]
    return parse_job(doc, source)
