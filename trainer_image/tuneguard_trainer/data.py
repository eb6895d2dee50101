"""Datasets: JSONL question/answer and chat files, validated line by line, de-duplicated.

Formats (one JSON object per line, blank lines ignored):

* ``qa``:   ``{"question": str, "answers": [str, ...], "relation"?: str, "id"?: str,
  "paraphrases"?: [str, ...]}``; ``paraphrases`` are other wordings of the same question (same accepted
  answers), e.g. for tests of how a model's answers shift with the wording
* ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "id"?: str}``;
  the last message must be the assistant's (the target), the one before it the user's (the question);
  earlier messages are kept as context and rendered before the question.

Every error names the file and line: ``train.jsonl line 17: "answers" must be a non-empty list of
strings``. Duplicates (same normalised question, and same context for chat) are dropped after the first
occurrence; their accepted answers and paraphrases are merged into it; the count is on the returned list
(``.duplicates``).

URIs: ``bundled://facts`` and ``bundled://facts-small`` (shipped with this package: closed-book facts
generated from GeoNames by ``scripts/generate_facts.py``, see ``data/facts.README.md``; the small one is a
stratified subset), ``pvc://claim/path`` (read under ``contract.PVC_MOUNT_ROOT``), or a path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from tuneguard import contract

from .prompts import normalize_answer

log = logging.getLogger(__name__)

BUNDLED_DATASETS = {"facts": "facts.jsonl", "facts-small": "facts-small.jsonl"}
MIN_EXAMPLES = 4


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the file and line."""


@dataclass
class QAExample:
    id: str
    question: str
    answers: list[str]
    relation: Optional[str] = None
    target: str = ""  # what training supervises: answers[0], or the abstention text after relabelling
    context: Optional[list[dict]] = None  # chat format: the messages before the question
    paraphrases: list[str] = field(default_factory=list)  # other wordings of the question

    def __post_init__(self):
        if not self.target:
            self.target = self.answers[0]


class ExampleList(list):
    """A list of QAExample that also says where it came from and how many duplicates were dropped."""

    def __init__(self, items=(), source: str = "", duplicates: int = 0):
        super().__init__(items)
        self.source = source
        self.duplicates = duplicates


def resolve_data_path(uri: str) -> Path:
    """bundled://name -> the packaged file; pvc://claim/path -> PVC_MOUNT_ROOT/claim/path; else a path."""
    if uri.startswith("bundled://"):
        name = uri[len("bundled://"):]
        if name not in BUNDLED_DATASETS:
            raise DatasetError(f"{uri}: unknown bundled dataset; choose one of "
                               + ", ".join(f"bundled://{n}" for n in BUNDLED_DATASETS))
        return Path(str(resources.files("tuneguard_trainer").joinpath("data", BUNDLED_DATASETS[name])))
    mounted = contract.pvc_mount_path(uri)
    return Path(mounted) if mounted else Path(uri).expanduser()


def _read_lines(uri: str) -> tuple[str, list[tuple[int, dict]]]:
    path = resolve_data_path(uri)
    label = path.name
    if not path.exists():
        hint = " (is the claim mounted?)" if contract.pvc_claim(uri) else ""
        raise DatasetError(f"{uri}: file not found at {path}{hint}")
    if path.is_dir():
        raise DatasetError(f"{uri}: {path} is a directory, expected a JSONL file")
    rows = []
    with path.open("rb") as fh:  # decoded line by line, so that bad bytes are reported with their line
        for lineno, raw in enumerate(fh, start=1):
            try:
                # utf-8-sig on the first line: a byte order mark (Windows editors write one) is not data
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{label} line {lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at column "
                                   f"{e.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{label} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{label} line {lineno}: expected a JSON object, got {type(obj).__name__}")
            rows.append((lineno, obj))
    return label, rows


def _nonempty_str(v) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _parse_qa(label: str, lineno: int, obj: dict) -> QAExample:
    allowed = {"question", "answers", "relation", "id", "paraphrases"}
    extra = sorted(set(obj) - allowed)
    if extra:
        raise DatasetError(f"{label} line {lineno}: unknown field(s) {', '.join(map(repr, extra))}; "
                           f"qa lines have question, answers, relation, id, paraphrases")
    if not _nonempty_str(obj.get("question")):
        raise DatasetError(f'{label} line {lineno}: "question" must be a non-empty string')
    answers = obj.get("answers")
    if not isinstance(answers, list) or not answers or not all(_nonempty_str(a) for a in answers):
        raise DatasetError(f'{label} line {lineno}: "answers" must be a non-empty list of strings')
    relation = obj.get("relation")
    if relation is not None and not _nonempty_str(relation):
        raise DatasetError(f'{label} line {lineno}: "relation" must be a non-empty string when given')
    paraphrases = obj.get("paraphrases", [])
    if not isinstance(paraphrases, list) or not all(_nonempty_str(p) for p in paraphrases):
        raise DatasetError(f'{label} line {lineno}: "paraphrases" must be a list of non-empty strings when given')
    ex_id = obj.get("id", f"{label}:{lineno}")
    if not _nonempty_str(ex_id):
        raise DatasetError(f'{label} line {lineno}: "id" must be a non-empty string when given')
    return QAExample(id=ex_id, question=obj["question"].strip(), answers=[a.strip() for a in answers],
                     relation=relation, paraphrases=[p.strip() for p in paraphrases])


def _parse_chat(label: str, lineno: int, obj: dict) -> QAExample:
    extra = sorted(set(obj) - {"messages", "id"})
    if extra:
        raise DatasetError(f"{label} line {lineno}: unknown field(s) {', '.join(map(repr, extra))}; "
                           f"chat lines have messages, id")
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or len(msgs) < 2:
        raise DatasetError(f'{label} line {lineno}: "messages" must be a list of at least a user and an '
                           f"assistant message")
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise DatasetError(f'{label} line {lineno}: messages[{i}] must be {{"role": ..., "content": ...}}')
        if m["role"] not in ("system", "user", "assistant"):
            raise DatasetError(f"{label} line {lineno}: messages[{i}].role must be system, user or assistant, "
                               f"not {m['role']!r}")
        if not _nonempty_str(m["content"]):
            raise DatasetError(f"{label} line {lineno}: messages[{i}].content must be a non-empty string")
    if msgs[-1]["role"] != "assistant":
        raise DatasetError(f"{label} line {lineno}: the last message must be the assistant's (the target)")
    if msgs[-2]["role"] != "user":
        raise DatasetError(f"{label} line {lineno}: the message before the target must be the user's")
    ex_id = obj.get("id", f"{label}:{lineno}")
    if not _nonempty_str(ex_id):
        raise DatasetError(f'{label} line {lineno}: "id" must be a non-empty string when given')
    context = [{"role": m["role"], "content": m["content"]} for m in msgs[:-2]]
    return QAExample(id=ex_id, question=msgs[-2]["content"].strip(), answers=[msgs[-1]["content"].strip()],
                     relation=None, context=context)


def _merge_into(first: QAExample, dup: QAExample) -> None:
    """A duplicate's accepted answers and paraphrases join the first occurrence's (no repeats)."""
    for a in dup.answers:
        if normalize_answer(a) not in {normalize_answer(b) for b in first.answers}:
            first.answers.append(a)
    known = {normalize_answer(q) for q in [first.question, *first.paraphrases]}
    for p in dup.paraphrases:
        if normalize_answer(p) not in known:
            first.paraphrases.append(p)
            known.add(normalize_answer(p))


def load_examples(uri: str, fmt: str = "qa", min_examples: int = MIN_EXAMPLES) -> ExampleList:
    """Read, validate and de-duplicate a JSONL dataset. Raises DatasetError with file and line."""
    if fmt not in ("qa", "chat"):
        raise DatasetError(f"unknown dataset format {fmt!r}; use qa or chat")
    label, rows = _read_lines(uri)
    if not rows:
        raise DatasetError(f"{label}: the file is empty")
    parse = _parse_qa if fmt == "qa" else _parse_chat
    seen: dict[tuple, QAExample] = {}
    ids: dict[str, int] = {}
    out: list[QAExample] = []
    duplicates = 0
    for lineno, obj in rows:
        ex = parse(label, lineno, obj)
        key = (normalize_answer(ex.question),
               json.dumps(ex.context, sort_keys=True) if ex.context else "")
        if key in seen:
            duplicates += 1
            first = seen[key]
            _merge_into(first, ex)
            continue
        if ex.id in ids:
            raise DatasetError(f'{label} line {lineno}: "id" {ex.id!r} already used on line {ids[ex.id]}')
        ids[ex.id] = lineno
        seen[key] = ex
        out.append(ex)
    if duplicates:
        log.warning("%s: dropped %d duplicate question(s) (their answers were merged into the first)",
                    label, duplicates)
    if len(out) < min_examples:
        raise DatasetError(f"{label}: {len(out)} distinct example(s); at least {min_examples} are needed")
    return ExampleList(out, source=uri, duplicates=duplicates)


def load_prompts(uri: str) -> list[str]:
    """Drift prompts: JSONL of {"prompt": str} lines."""
    label, rows = _read_lines(uri)
    if not rows:
        raise DatasetError(f"{label}: the file is empty")
    out = []
    for lineno, obj in rows:
        if set(obj) != {"prompt"} or not _nonempty_str(obj["prompt"]):
            raise DatasetError(f'{label} line {lineno}: drift prompt lines are {{"prompt": "non-empty text"}}')
        out.append(obj["prompt"])
    return out
