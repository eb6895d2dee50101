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


def make_tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
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
