"""Shared fixtures for the trainer's unit tests: a tiny tokenizer and tiny random Llama models.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in memory (milliseconds) on the bundled
facts plus the chat-template markup, with SmolLM2's special tokens and a SmolLM2-style chat template, so
prompts, stop tokens and teacher forcing behave as with the real model. Models are 2-layer Llamas with
hidden size 64, built from a config (seconds at most).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TRAINER_DATA = Path(__file__).resolve().parents[3] / "trainer_image" / "tuneguard_trainer" / "data"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _corpus() -> list[str]:
    lines = []
    with (TRAINER_DATA / "facts.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            lines.append(obj["question"] + "\nAnswer with just the answer, in a few words.")
            lines.extend(obj["answers"])
            lines.extend(a + "." for a in obj["answers"])
    lines += ["system\nYou are a helpful assistant.", "user\n", "assistant\n", "I don't know", "I don't know.",
              "Q: A:", "0123456789 ,;:!?'\"()-"]
    return lines


def make_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>" if chat else "<|endoftext|>",
                                  pad_token="<|endoftext|>", bos_token="<|im_start|>" if chat else None)
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A ~800-token byte-level BPE tokenizer with SmolLM2's special tokens and a chat template."""
    return make_tokenizer()


def make_tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64, init_range: float = 0.02):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=init_range,
    )
    model = LlamaForCausalLM(cfg).float().eval()
    return model


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A fresh 2-layer, hidden-64 random LlamaForCausalLM matching tiny_tokenizer (fp32, eval mode)."""
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def facts_path() -> Path:
    return TRAINER_DATA / "facts.jsonl"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """On a small shared CPU, one torch thread is much faster for tiny models than two (no contention)."""
    import torch

    torch.set_num_threads(1)


import torch as _torch


class Oracle(_torch.nn.Module):
    """Stand-in for a causal LM with chosen greedy outputs: after a token sequence ending with one of the
    ``outputs`` keys it emits that key's tokens one by one, and ``noise_id`` anywhere else. Supports what
    scoring.py uses: left padding with an attention mask, logits_to_keep, and a key/value "cache" that
    can be repeated per batch row. Argmax logit 10, all others -10."""

    def __init__(self, outputs: dict, vocab: int, noise_id: int):
        super().__init__()
        self.w = _torch.nn.Parameter(_torch.zeros(4))
        self.outputs, self.vocab, self.noise_id = outputs, vocab, noise_id

    def get_output_embeddings(self):
        return _torch.nn.Linear(1, self.vocab, bias=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, logits_to_keep=0, **kw):
        b, n = input_ids.shape
        prev = past_key_values or [[] for _ in range(b)]
        mask = attention_mask[:, -n:] if attention_mask is not None else _torch.ones_like(input_ids)
        seqs = [prev[i] + [t for t, m in zip(input_ids[i].tolist(), mask[i].tolist()) if m] for i in range(b)]
        logits = _torch.full((b, n, self.vocab), -10.0)
        for i, s in enumerate(seqs):
            for j in range(n):
                cut = len(s) - (n - 1 - j)  # the prefix that position j of this call ends
                for t, v in (self._row(s[:cut]) if cut > 0 else {self.noise_id: 10.0}).items():
                    logits[i, j, t] = v
        keep = logits_to_keep or n
        out = type("Out", (), {})()
        out.logits = logits[:, -keep:] + self.w.sum()
        out.past_key_values = _Past(seqs)
        return out

    def _row(self, seq) -> dict:
        """Logits above the -10 floor after ``seq``: {token: logit}."""
        return {self._next(seq): 10.0}

    def _next(self, seq):
        for prompt, ans in self.outputs.items():
            L = len(prompt)
            for k in range(len(ans)):
                if len(seq) >= L + k and tuple(seq[len(seq) - L - k:len(seq) - k]) == prompt \
                        and tuple(seq[len(seq) - k:]) == tuple(ans[:k]):
                    return ans[k]
        return self.noise_id


class _Past(list):
    """The Oracle's "key/value cache": each row's tokens so far."""

    def batch_repeat_interleave(self, n):
        self[:] = [list(s) for s in self for _ in range(n)]

    def batch_select_indices(self, indices):
        self[:] = [list(self[i]) for i in indices.tolist()]


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (bundled; converted once into the cache), fp32 on CPU."""
    from tuneguard_trainer.models import load_model, resolve_model

    return load_model(resolve_model("bundled://smollm2-135m-instruct"), "cpu")