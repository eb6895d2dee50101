"""Batched forward passes shared by triage and evaluation: teacher forcing and short decoding.

Both run over *rows*: a prompt (token ids) and, for teacher forcing, a continuation. Rows are sorted by
their prompt so that rows sharing a prefix (a few-shot prompt's exemplars, a chat template's system
header) land in the same batch; the batch's longest common prompt prefix is run once with batch size 1,
its key/value cache is repeated for the batch, and only the rows' own tokens are run for every row.
Row suffixes are left-padded with explicit position ids, so every row's continuation ends at the same
column and only the last ``max continuation`` positions are projected to the vocabulary
(``logits_to_keep``): memory is batch x continuation x vocab, not batch x sequence x vocab.

The model is put in eval mode for the call and its previous mode restored; everything runs under
``torch.no_grad``. Works for any Hugging Face causal LM, including a DeepSpeed engine's ``.module``
(ZeRO stage 0-2: full parameters on every rank).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, Optional, Sequence

import torch

MIN_PREFIX = 8  # shorter common prefixes are not worth a separate pass


@contextlib.contextmanager
def eval_mode(model):
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _lcp(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


def _batches(prompts: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(prompts)), key=lambda i: (tuple(prompts[i]),))
    for k in range(0, len(order), batch_size):
        yield order[k:k + batch_size]


def _prefix_cache(model, prefix: list[int], device):
    """Run the shared prefix once (batch 1); return its cache, or None when it is too short."""
    if len(prefix) < MIN_PREFIX:
        return None
    ids = torch.tensor([prefix], device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    return out.past_key_values


def _expand(cache, n: int):
    c = copy.deepcopy(cache)
    if n > 1:
        c.batch_repeat_interleave(n)
    return c


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device):
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, n - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, n - len(r):] = 1
    return ids.to(device), mask.to(device)


def _run(model, prefix_len: int, cache, ids, mask, keep: int):
    """Forward the left-padded row suffixes after an optional cached prefix; returns (logits of the last
    ``keep`` positions [B, keep, V] in float32, the cache, the full attention mask, next positions)."""
    b = ids.shape[0]
    pos = (mask.cumsum(-1) - 1).clamp(min=0) + prefix_len
    if cache is not None:
        full_mask = torch.cat([torch.ones((b, prefix_len), dtype=mask.dtype, device=mask.device), mask], dim=1)
        past = _expand(cache, b)
    else:
        full_mask, past = mask, None
    out = model(input_ids=ids, attention_mask=full_mask, position_ids=pos, past_key_values=past,
                use_cache=True, logits_to_keep=keep)
    return out.logits.float(), out.past_key_values, full_mask, pos[:, -1] + 1


def teacher_forced(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                   pad_id: int, batch_size: int = 32,
                   consume: Optional[Callable[[int, torch.Tensor], None]] = None,
                   progress=None) -> None:
    """For every row i, call ``consume(i, logits)`` with the float32 logits [len(cont_i), V] that predict
    each continuation token (teacher-forced on prompt_i + cont_i)."""
    assert len(prompts) == len(continuations)
    device = model_device(model)
    with eval_mode(model):
        for idx in _batches(prompts, batch_size):
            ps = [prompts[i] for i in idx]
            cs = [continuations[i] for i in idx]
            plen = min(_lcp(ps), min(len(p) for p in ps) - 1)
            cache = _prefix_cache(model, list(ps[0][:plen]), device) if plen >= MIN_PREFIX else None
            if cache is None:
                plen = 0
            # Right-align: every row ends with its continuation; keep = the longest continuation + 1.
            suffixes = [list(p[plen:]) + list(c[:-1]) for p, c in zip(ps, cs)]
            keep = max(len(c) for c in cs)
            ids, mask = _left_pad(suffixes, pad_id, device)
            logits, *_ = _run(model, plen, cache, ids, mask, keep)
            for j, i in enumerate(idx):
                n = len(cs[j])
                consume(i, logits[j, keep - n:])
            if progress is not None:
                progress.update(len(idx))


def greedy_emits(logits: torch.Tensor, cand: Sequence[int], n_answer: int, has_period: bool,
                 stop_ids: set[int]) -> bool:
    """Given logits predicting ``cand`` (= answer tokens [+ period] + stop), does greedy decoding emit the
    answer (optionally followed by the period) and then stop? Exact for greedy decoding."""
    am = logits.argmax(-1).tolist()
    for j in range(n_answer):
        if am[j] != cand[j]:
            return False
    nxt = am[n_answer]
    if nxt in stop_ids:
        return True
    return has_period and nxt == cand[n_answer] and am[n_answer + 1] in stop_ids


def decode(model, prompts: Sequence[Sequence[int]], pad_id: int, stop_ids: set[int], max_new_tokens: int,
           batch_size: int = 32, num_samples: int = 1, temperature: float = 0.0, top_k: int = 0,
           generator: Optional[torch.Generator] = None, progress=None) -> list[list[list[int]]]:
    """Greedy (temperature 0) or sampled continuations: for each prompt, ``num_samples`` lists of new
    token ids (ending with the stop token when one was emitted)."""
    device = model_device(model)
    results: list[list[list[int]]] = [[] for _ in prompts]
    stop = torch.tensor(sorted(stop_ids), device=device)
    per_batch = max(1, batch_size // max(1, num_samples))
    with eval_mode(model):
        for idx in _batches(prompts, per_batch):
            ps = [prompts[i] for i in idx]
            plen = min(_lcp(ps), min(len(p) for p in ps) - 1)
            cache = _prefix_cache(model, list(ps[0][:plen]), device) if plen >= MIN_PREFIX else None
            if cache is None:
                plen = 0
            rows = [list(p[plen:]) for p in ps for _ in range(num_samples)]
            ids, mask = _left_pad(rows, pad_id, device)
            logits, past, full_mask, pos = _run(model, plen, cache, ids, mask, 1)
            b = ids.shape[0]
            out = torch.zeros((b, 0), dtype=torch.long, device=device)
            done = torch.zeros(b, dtype=torch.bool, device=device)
            for step in range(max_new_tokens):
                scores = logits[:, -1]
                if temperature and temperature > 0:
                    scores = scores / temperature
                    if top_k:
                        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
                        scores = scores.masked_fill(scores < kth, float("-inf"))
                    probs = torch.softmax(scores, dim=-1)
                    nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
                else:
                    nxt = scores.argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
                out = torch.cat([out, nxt[:, None]], dim=1)
                done = done | torch.isin(nxt, stop)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                full_mask = torch.cat([full_mask, torch.ones((b, 1), dtype=full_mask.dtype, device=device)], 1)
                o = model(input_ids=nxt[:, None], attention_mask=full_mask, position_ids=pos[:, None],
                          past_key_values=past, use_cache=True)
                logits, past, pos = o.logits.float(), o.past_key_values, pos + 1
            out_l = out.tolist()
            for r, row in enumerate(out_l):
                toks = []
                for t in row:
                    toks.append(t)
                    if t in stop_ids:
                        break
                results[idx[r // num_samples]].append(toks)
            if progress is not None:
                progress.update(len(idx))
    return results
