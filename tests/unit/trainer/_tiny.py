"""Tiny randomly initialised models built from a config (no files), for the method/freeze tests."""

from __future__ import annotations

import torch


def tiny_llama(seed: int = 0, tie: bool = True, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).float()


def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                           sliding_window=16, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    return Gemma3ForCausalLM(cfg).float()


def toy_batch(seed: int = 0, b: int = 4, t: int = 12, vocab: int = 64, prompt: int = 7):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    mask = torch.ones_like(ids)
    # right padding on the last row
    ids[-1, -2:] = 0
    labels[-1, -2:] = -100
    mask[-1, -2:] = 0
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "index": torch.arange(b)}
