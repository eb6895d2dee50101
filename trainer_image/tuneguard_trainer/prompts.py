"""Prompt formatting, answer normalisation and training encoding: the one place for all of it.

Every other module (triage, evaluation, training) builds prompts through :class:`PromptFormat`, so the
base model is triaged, trained and evaluated on exactly the same token sequences.

Two formats, chosen from the tokenizer:

* ``chat`` (the tokenizer has a chat template, e.g. SmolLM2-Instruct): a closed-book question is one user
  turn, ``"<question>\\nAnswer with just the answer, in a few words."``, followed by the template's
  generation prompt; the answer is the assistant content, ended by the template's end-of-turn token
  (``<|im_end|>`` for SmolLM2). A few-shot prompt is k user/assistant turns (question / target, i.e. the
  first accepted answer unless relabelled), then the question, all without the instruction (the exemplars show the format).
* ``plain`` (no chat template, e.g. a base model): ``"Q: <question>\\nA:"`` blocks separated by a blank
  line; the answer is ``" <answer>"``; training ends it with EOS; a stop is EOS or any token starting
  with a newline.

Chat-format datasets (``QAExample.context`` set) are rendered verbatim: earlier messages, then the user
message, without the instruction.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .data import QAExample

INSTRUCTION = "Answer with just the answer, in a few words."

# Phrases that make an answer an abstention when it OPENS with one of them (compared after
# normalize_answer, as whole words). Opening, not containing: "Paris, but I'm not sure" commits to an
# answer (a fabrication if it is wrong); and an opening is decided by a prefix of the text, so the
# evaluator can rule an abstention out from the first greedy tokens without decoding the rest
# (see could_abstain).
ABSTENTION_PHRASES = (
    "i don't know",
    "i do not know",
    "i dont know",
    "don't know",
    "unknown",
    "not sure",
    "i'm not sure",
    "i am not sure",
    "no idea",
    "i have no idea",
    "i cannot answer",
    "i can't answer",
    "i am unable",
    "i'm unable",
    "cannot be determined",
    "i don't have information",
    "i do not have information",
    "no information",
    "i'm not aware",
    "i am not aware",
    "not aware of",
    "sorry",
    "i'm sorry",
    "i apologize",
    "there is no",
    "does not exist",
    "doesn't exist",
    "not a real",
    "fictional",
)

IGNORE_INDEX = -100

# --------------------------------------------------------------------------------- normalisation

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d"}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def is_correct(text: str, answers: Iterable[str]) -> bool:
    """Normalised exact match against any accepted answer."""
    norm = normalize_answer(text)
    return any(norm == normalize_answer(a) for a in answers)


def _abstention_phrases(abstention_text: str | None) -> list[str]:
    phrases = [normalize_answer(p) for p in ABSTENTION_PHRASES]
    if abstention_text:
        phrases.append(normalize_answer(abstention_text))
    return [p for p in phrases if p]


def is_abstention(text: str, abstention_text: str | None = None) -> bool:
    """True when the normalised text opens with an abstention phrase or the configured abstention text
    (whole words)."""
    norm = normalize_answer(text)
    return any(norm == p or norm.startswith(p + " ") for p in _abstention_phrases(abstention_text))


def could_abstain(text: str, abstention_text: str | None = None) -> bool:
    """Can an answer that starts with ``text`` still be an abstention? False is exact (normalisation is
    prefix-monotone, see could_become); a partial UTF-8 character keeps it open."""
    if "\ufffd" in text:
        return True
    head = normalize_answer(text)
    return not head or any(p.startswith(head) or head.startswith(p + " ")
                           for p in _abstention_phrases(abstention_text))


def could_become(text: str, answers: Iterable[str]) -> bool:
    """Can an answer that starts with ``text`` still normalise to one of ``answers``? Normalisation is
    prefix-monotone (a non-empty normalised prefix of a text is a prefix of the normalised text), so
    False is exact; a partial UTF-8 character keeps it open."""
    if "\ufffd" in text:
        return True
    head = normalize_answer(text)
    return not head or any(normalize_answer(a).startswith(head) for a in answers)


def classify(text: str, answers: Iterable[str], abstention_text: str | None = None) -> str:
    """'correct', 'abstain' or 'wrong' (correctness is checked first)."""
    if is_correct(text, answers):
        return "correct"
    if is_abstention(text, abstention_text):
        return "abstain"
    return "wrong"


# ------------------------------------------------------------------------------------ the format


@dataclass
class Encoded:
    """A prompt's token ids and, for teacher forcing, a candidate answer's ids."""

    prompt_ids: list[int]
    answer_ids: list[int]


class PromptFormat:
    """How this tokenizer's model is asked a question and how its answer ends."""

    def __init__(self, tokenizer, instruction: str = INSTRUCTION):
        self.tokenizer = tokenizer
        self.instruction = instruction
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        if self.chat:
            self.end_text = self._end_of_turn_text()
            self.end_ids = tokenizer(self.end_text, add_special_tokens=False)["input_ids"] if self.end_text else []
        else:
            self.end_text = ""
            self.end_ids = []
        if not self.end_ids:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has neither a chat template with an end-of-turn token nor an EOS token")
            self.end_ids = [tokenizer.eos_token_id]
        self.stop_ids: set[int] = {self.end_ids[0]}
        if tokenizer.eos_token_id is not None:
            self.stop_ids.add(int(tokenizer.eos_token_id))
        if not self.chat:
            # In plain format a generated line ends the answer.
            for tok_id in range(len(tokenizer)):
                piece = tokenizer.decode([tok_id])
                if piece.startswith("\n"):
                    self.stop_ids.add(tok_id)
        self._period_ok: dict[str, bool] = {}

    # -------------------------------------------------------------------------------- internals
    def _end_of_turn_text(self) -> str:
        """The text the template puts right after an assistant message (e.g. '<|im_end|>')."""
        marker = "XQZ7MARK"
        msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
        try:
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False)
        except Exception:  # templates that insist on other roles
            return ""
        after = text.split(marker, 1)[1] if marker in text else ""
        after = after.strip()
        # Keep the first special-looking token, e.g. '<|im_end|>' or '<end_of_turn>'.
        m = re.match(r"(<[^<>\s]+>)", after)
        return m.group(1) if m else after.split()[0] if after else ""

    def _render_chat(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _user(self, question: str) -> str:
        return f"{question}\n{self.instruction}" if self.instruction else question

    # ------------------------------------------------------------------------------------ prompts
    def messages(self, example: "QAExample", shots: Sequence["QAExample"] = ()) -> list[dict]:
        msgs: list[dict] = []
        if getattr(example, "context", None):
            msgs.extend(example.context)
            msgs.append({"role": "user", "content": example.question})
            return msgs
        # With exemplars the format is shown, not told: no instruction (shorter prompts, and SmolLM2-135M
        # answers at least as often correctly without it).
        user = (lambda q: q) if shots else self._user
        for ex in shots:
            msgs.append({"role": "user", "content": user(ex.question)})
            msgs.append({"role": "assistant", "content": ex.target or ex.answers[0]})
        msgs.append({"role": "user", "content": user(example.question)})
        return msgs

    def prompt_ids(self, example: "QAExample", shots: Sequence["QAExample"] = ()) -> list[int]:
        """Token ids of the closed-book (shots=()) or few-shot prompt, ending where the answer starts."""
        if self.chat:
            return self._render_chat(self.messages(example, shots))
        blocks = [f"Q: {ex.question}\nA: {ex.target or ex.answers[0]}" for ex in shots]
        blocks.append(f"Q: {example.question}\nA:")
        return self.tokenizer("\n\n".join(blocks))["input_ids"]

    def text_prompt_ids(self, text: str) -> list[int]:
        """A free prompt (drift prompts): one user turn without the instruction."""
        if self.chat:
            return self._render_chat([{"role": "user", "content": text}])
        return self.tokenizer(text)["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        """The answer's tokens as the model would emit them after the prompt (no end token)."""
        text = answer if self.chat else " " + answer
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Generated ids -> answer text, cut at the first stop token (and, in plain format, a newline)."""
        out = []
        for t in ids:
            if int(t) in self.stop_ids:
                break
            out.append(int(t))
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        if not self.chat:
            text = text.split("\n", 1)[0]
        return text.strip()


# --------------------------------------------------------------------------------- few-shot prompts


class FewShotExemplars:
    """The fixed few-shot exemplars of each relation: ``shots + 1`` training facts per relation (as
    trained, so their targets are shown), drawn once by seed. ``for_example(ex)`` gives ``ex``'s exemplars,
    never ``ex`` itself, and none for a fact with a context or without a relation's pool. The evaluator
    asks its questions with them, and a self-distill teacher with ``teacherPrompt: few-shot`` sees them;
    the same seed gives the same exemplars on every rank."""

    def __init__(self, train: Sequence["QAExample"], shots: int, seed: int = 0):
        self.shots = shots
        pools: dict = {}
        for e in train:
            if e.context is None:
                pools.setdefault(e.relation, []).append(e)
        self.by_relation: dict = {}
        for rel, pool in sorted(pools.items(), key=lambda kv: str(kv[0])):
            pool = sorted(pool, key=lambda e: e.id)
            random.Random(f"eval:{seed}:{rel}").shuffle(pool)
            self.by_relation[rel] = pool[: shots + 1]

    def for_example(self, ex: "QAExample") -> list["QAExample"]:
        if ex.context is not None or self.shots == 0:
            return []
        return [e for e in self.by_relation.get(ex.relation, []) if e.id != ex.id][: self.shots]


# --------------------------------------------------------------------------------- training data


def encode_for_training(tokenizer, examples: Sequence["QAExample"], max_seq_length: int,
                        fmt: PromptFormat | None = None, shots=None) -> list[dict]:
    """Closed-book prompt + target + end-of-turn token, as {input_ids, labels} lists.

    Labels are -100 on prompt tokens; the target and its end token are supervised. Sequences longer than
    ``max_seq_length`` are truncated from the left (the prompt's start goes first). ``shots`` (optional,
    e.g. ``Evaluator.shots_for``) maps an example to exemplars, to train in the evaluation's few-shot
    format instead of the zero-shot one."""
    if max_seq_length < 2:
        raise ValueError("max_seq_length must be at least 2")
    fmt = fmt or PromptFormat(tokenizer)
    out = []
    for ex in examples:
        prompt = fmt.prompt_ids(ex, shots(ex) if shots is not None else ())
        target = fmt.answer_ids(ex.target) + list(fmt.end_ids[:1])
        ids = prompt + target
        labels = [IGNORE_INDEX] * len(prompt) + target
        if len(ids) > max_seq_length:
            ids, labels = ids[-max_seq_length:], labels[-max_seq_length:]
        out.append({"input_ids": ids, "labels": labels})
    return out
