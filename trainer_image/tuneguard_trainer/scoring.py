"""Batched forward passes shared by triage and evaluation: teacher forcing, short decoding, and walks
(greedy and sampled continuations of one prompt pass, for SliCK triage; see ``walk``).

Teacher forcing and decoding run over *rows*: a prompt (token ids) and, for teacher forcing, a
continuation. Rows are sorted by their prompt so that rows sharing a prefix (a few-shot prompt's
exemplars, a chat template's system header) land in the same batch; the batch's longest common prompt
prefix is run once with batch size 1, its key/value cache is repeated for the batch, and only the rows'
own tokens are run for every row. Row suffixes are left-padded with explicit position ids, so every row's
continuation ends at the same column and only the last ``max continuation`` positions are projected to
the vocabulary (``logits_to_keep``): memory is batch x continuation x vocab, not batch x sequence x
vocab.

The model is put in eval mode for the call and its previous mode restored; everything runs under
``torch.no_grad``. Works for any Hugging Face causal LM, including a DeepSpeed engine's ``.module``
(ZeRO stage 0-2: full parameters on every rank).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol, Sequence

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


def _pair_lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _batches(prompts: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of at most batch_size. Rows are sorted by prompt and cut into groups
    wherever two neighbours share less than half of the shorter prompt; a group fills batches of its own
    (one long shared prefix each, computed once), prompts alike to no other are packed together."""
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
    groups: list[list[int]] = []
    for i in order:
        if groups:
            prev = prompts[groups[-1][-1]]
            if _pair_lcp(prev, prompts[i]) * 2 >= min(len(prev), len(prompts[i])):
                groups[-1].append(i)
                continue
        groups.append([i])
    mixed: list[int] = []
    for g in groups:
        if len(g) > 1:
            for k in range(0, len(g), batch_size):
                yield g[k:k + batch_size]
        else:
            if len(mixed) + len(g) > batch_size:
                yield mixed
                mixed = []
            mixed.extend(g)
    if mixed:
        yield mixed


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


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device):
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


class PrefixMemo:
    """The last shared prefix's cache, reused while consecutive batches share the same prefix."""

    def __init__(self, model, device):
        self.model, self.device, self.key, self.cache = model, device, None, None

    def get(self, prefix: list[int]):
        if len(prefix) < MIN_PREFIX:
            return None
        key = tuple(prefix)
        if key != self.key:
            self.key, self.cache = key, _prefix_cache(self.model, prefix, self.device)
        return self.cache


def teacher_forced(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                   pad_id: int, batch_size: int = 32,
                   consume: Optional[Callable[[int, torch.Tensor], None]] = None,
                   progress=None) -> None:
    """For every row i, call ``consume(i, logits)`` with the float32 logits [len(cont_i), V] that predict
    each continuation token (teacher-forced on prompt_i + cont_i).

    Two stages per batch: the batch's distinct prompts are run once (after the shared prefix), then their
    caches are selected per row and only the continuations are run, so several candidate answers to one
    prompt cost one prompt pass."""
    assert len(prompts) == len(continuations)
    device = model_device(model)
    with eval_mode(model):
        memo = PrefixMemo(model, device)
        for idx in _batches(prompts, batch_size):
            uniq: dict[tuple, int] = {}
            row_u = []
            for i in idx:
                row_u.append(uniq.setdefault(tuple(prompts[i]), len(uniq)))
            ups = [list(p) for p in uniq]
            cs = [continuations[i] for i in idx]
            plen = min(_lcp(ups), min(len(p) for p in ups) - 1)
            cache = memo.get(ups[0][:plen]) if plen >= MIN_PREFIX else None
            if cache is None:
                plen = 0
            # Stage 1: distinct prompts -> logits predicting each continuation's first token.
            ids, mask = left_pad([p[plen:] for p in ups], pad_id, device)
            first, past, full_mask, nxt_pos = _run(model, plen, cache, ids, mask, 1)
            m = max(len(c) for c in cs) - 1
            rest = None
            if m > 0:
                # Stage 2: every row's continuation (but its last token) after its prompt's cache.
                sel = torch.tensor(row_u, device=device)
                past.batch_select_indices(sel)
                ids2, mask2 = left_pad([list(c[:-1]) for c in cs], pad_id, device)
                pos2 = nxt_pos[sel][:, None] + (mask2.cumsum(-1) - 1).clamp(min=0)
                out = model(input_ids=ids2, attention_mask=torch.cat([full_mask[sel], mask2], dim=1),
                            position_ids=pos2, past_key_values=past, use_cache=True, logits_to_keep=m)
                rest = out.logits.float()
            for j, i in enumerate(idx):
                n = len(cs[j])
                parts = [first[row_u[j], -1:]]
                if n > 1:
                    parts.append(rest[j, m - (n - 1):])
                consume(i, torch.cat(parts, dim=0))
            if progress is not None:
                progress.update(len(idx))


def decode(model, prompts: Sequence[Sequence[int]], pad_id: int, stop_ids: set[int], max_new_tokens: int,
           batch_size: int = 32, num_samples: int = 1, temperature: float = 0.0, top_k: int = 0,
           generator: Optional[torch.Generator] = None, progress=None,
           alive: Optional[Callable[[int, list[int]], bool]] = None) -> list[list[list[int]]]:
    """Greedy (temperature 0) or sampled continuations: for each prompt, ``num_samples`` lists of new
    token ids (ending with the stop token when one was emitted). ``alive(prompt_index, tokens)`` may end a
    row early (its output so far is returned) once the caller knows the rest cannot matter."""
    device = model_device(model)
    results: list[list[list[int]]] = [[] for _ in prompts]
    per_batch = max(1, batch_size // max(1, num_samples))
    with eval_mode(model):
        memo = PrefixMemo(model, device)
        for idx in _batches(prompts, per_batch):
            ps = [prompts[i] for i in idx]
            plen = min(_lcp(ps), min(len(p) for p in ps) - 1)
            cache = memo.get(list(ps[0][:plen])) if plen >= MIN_PREFIX else None
            if cache is None:
                plen = 0
            rows = [list(p[plen:]) for p in ps]
            ids, mask = left_pad(rows, pad_id, device)
            logits, past, full_mask, pos = _run(model, plen, cache, ids, mask, 1)
            if num_samples > 1:  # the prompt is run once; its cache is repeated for the samples
                past.batch_repeat_interleave(num_samples)
                logits = logits.repeat_interleave(num_samples, dim=0)
                full_mask = full_mask.repeat_interleave(num_samples, dim=0)
                pos = pos.repeat_interleave(num_samples, dim=0)
            b = logits.shape[0]
            rows_out: list[list[int]] = [[] for _ in range(b)]
            active = list(range(b))  # rows still generating; finished rows leave the batch
            scores = logits[:, -1]
            for step in range(max_new_tokens):
                if temperature and temperature > 0:
                    sc = scores / temperature
                    if top_k:
                        kth = torch.topk(sc, min(top_k, sc.shape[-1]), dim=-1).values[:, -1:]
                        sc = sc.masked_fill(sc < kth, float("-inf"))
                    probs = torch.softmax(sc, dim=-1)
                    nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)
                else:
                    nxt = scores.argmax(-1)
                keep = []
                for li, (r, t) in enumerate(zip(active, nxt.tolist())):
                    rows_out[r].append(t)
                    if t in stop_ids or (alive is not None and not alive(idx[r // num_samples], rows_out[r])):
                        continue
                    keep.append(li)
                if not keep or step == max_new_tokens - 1:
                    break
                if len(keep) < len(active):
                    sel = torch.tensor(keep, device=device)
                    past.batch_select_indices(sel)
                    full_mask, pos, nxt = full_mask[sel], pos[sel], nxt[sel]
                    active = [active[li] for li in keep]
                full_mask = torch.cat([full_mask, torch.ones((len(active), 1), dtype=full_mask.dtype,
                                                             device=device)], 1)
                o = model(input_ids=nxt[:, None], attention_mask=full_mask, position_ids=pos[:, None],
                          past_key_values=past, use_cache=True)
                scores, past, pos = o.logits[:, -1].float(), o.past_key_values, pos + 1
            for r, toks in enumerate(rows_out):
                results[idx[r // num_samples]].append(toks)
            if progress is not None:
                progress.update(len(idx))
    return results


# ------------------------------------------------------------------------------ walks (SliCK triage)
#
# A *walk* is one continuation of a prompt: greedy, or sampled with its own noise stream. Walks that have
# emitted the same tokens after the same prompt are one *node*: one row of the forward pass, whose
# logits every walk on it reads (its greedy token, or its own sample). At T = 0.5 most of a prompt's
# samples agree on their first tokens, so a prompt with 1 greedy walk and 16 samples typically costs a
# couple of rows per step, not 17, and walks that can no longer matter leave after any token.


def row_uniform(key: str, step: int) -> float:
    """A uniform in [0, 1) that depends only on (key, step): the noise a sampled walk uses for its
    ``step``-th token. Counter-based (blake2b), so it does not depend on which other rows share a batch,
    in what order, or whether they stopped early; any implementation that asks for (key, step) draws the
    same number."""
    h = hashlib.blake2b(f"{key}\x00{step}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "big") >> 11) * (1.0 / (1 << 53))


class SamplingTable:
    """Per row of ``scores`` [N, V], the distribution of one sample at ``temperature`` with top-k
    filtering (the tokens whose scaled score is at least the k-th largest, ties kept, as transformers'
    TopKLogitsWarper does), laid out as a float64 CDF over the kept tokens in token-id order.

    ``draw(rows, u)`` is inverse-CDF sampling: token = the first kept token (by id) whose CDF exceeds
    ``u * total``. An exact sample of that distribution for u ~ U[0, 1); ordering by id (not by
    probability) means near-equal probabilities never reorder, so two computations of the same logits
    that differ by rounding pick different tokens only when u falls within that rounding of a CDF step."""

    def __init__(self, scores: torch.Tensor, temperature: float, top_k: int):
        sc = scores.float() / temperature
        k = min(top_k, sc.shape[-1]) if top_k else sc.shape[-1]
        kth = torch.topk(sc, k, dim=-1).values[:, -1:]
        width = int((sc >= kth).sum(-1).max())
        ids = torch.topk(sc, width, dim=-1).indices.sort(dim=-1).values
        kept = sc.gather(1, ids)
        kept = kept.masked_fill(kept < kth, float("-inf"))
        self.ids = ids
        self.cdf = torch.softmax(kept.double(), dim=-1).cumsum(-1)

    def draw(self, rows: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        cdf = self.cdf[rows]
        x = (u.double().to(cdf.device) * cdf[:, -1]).unsqueeze(1)
        pick = torch.searchsorted(cdf, x, right=True).clamp(max=cdf.shape[1] - 1)
        return self.ids[rows].gather(1, pick).squeeze(1)


def sample_tokens(scores: torch.Tensor, u: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """One sample per row of ``scores`` [N, V] with the row's uniform ``u`` [N] (see SamplingTable)."""
    return SamplingTable(scores, temperature, top_k).draw(torch.arange(scores.shape[0]), u)


@dataclass
class Walk:
    """One continuation of ``prompts[prompt]``: greedy when ``key`` is None, else sampled with the noise
    stream ``key`` (row_uniform). Ends at a stop token, after ``max_new_tokens`` tokens, or when the judge
    lets it go. ``owner`` is the caller's tag (e.g. which fact and prompt)."""

    prompt: int
    key: Optional[str]
    max_new_tokens: int
    owner: tuple = ()
    tokens: list[int] = field(default_factory=list)


class WalkJudge(Protocol):
    def finished(self, walk: Walk) -> None:
        """The walk ended by a stop token or its token budget: ``walk.tokens`` is its whole output."""

    def keep(self, walk: Walk) -> bool:
        """Called for every unfinished walk after each step (after all of the step's ``finished`` calls):
        False ends it (its output can no longer matter to the caller)."""


def walk(model, prompts: Sequence[Sequence[int]], walks: Sequence[Walk], judge: WalkJudge, pad_id: int,
         stop_ids: set[int], prefix_len: int = 0, memo: Optional["PrefixMemo"] = None,
         temperature: float = 1.0, top_k: int = 0) -> None:
    """Run ``walks`` over ``prompts`` (all sharing their first ``prefix_len`` tokens, run once and cached
    through ``memo``): one forward pass over the prompts' own tokens, then one single-token step per
    round over the distinct (prompt, tokens so far) nodes of the walks still running.

    Exact with respect to decoding each walk on its own: a greedy walk takes the argmax of its node's
    logits, a sampled walk SamplingTable's draw with row_uniform(key, its token count); neither depends
    on the other walks, on batching or on early exits (up to floating-point rounding of the logits)."""
    if not walks:
        return
    device = model_device(model)
    memo = memo or PrefixMemo(model, device)
    with eval_mode(model), torch.inference_mode():
        cache = memo.get(list(prompts[0][:prefix_len])) if prefix_len >= MIN_PREFIX else None
        plen = prefix_len if cache is not None else 0
        ids, mask = left_pad([list(p[plen:]) for p in prompts], pad_id, device)
        logits, past, full_mask, pos = _run(model, plen, cache, ids, mask, 1)
        scores = logits[:, -1]
        active = [(w, w.prompt) for w in walks]  # (walk, its node: a row of scores and of the cache)
        while True:
            running = []
            for (w, node), t in zip(active, _draw(scores, active, temperature, top_k)):
                w.tokens.append(t)
                if t in stop_ids or len(w.tokens) >= w.max_new_tokens:
                    judge.finished(w)
                else:
                    running.append((w, node))
            children: dict[tuple[int, int], int] = {}  # (parent node, token) -> child node
            active = [(w, children.setdefault((node, w.tokens[-1]), len(children)))
                      for w, node in running if judge.keep(w)]
            if not active:
                return
            parents = torch.tensor([n for n, _ in children], device=device)
            tokens = torch.tensor([[t] for _, t in children], device=device)
            past.batch_select_indices(parents)
            full_mask = torch.cat([full_mask[parents], torch.ones((len(children), 1), dtype=full_mask.dtype,
                                                                  device=device)], 1)
            pos = pos[parents]
            out = model(input_ids=tokens, attention_mask=full_mask, position_ids=pos[:, None],
                        past_key_values=past, use_cache=True)
            scores, past, pos = out.logits[:, -1].float(), out.past_key_values, pos + 1


def _draw(scores: torch.Tensor, active: list[tuple[Walk, int]], temperature: float, top_k: int) -> list[int]:
    """Each walk's next token from its node's row of ``scores``: argmax for greedy walks, a SamplingTable
    draw with row_uniform(key, tokens so far) for sampled ones."""
    out = scores.argmax(-1)[torch.tensor([n for _, n in active])].tolist()
    sampled = [k for k, (w, _) in enumerate(active) if w.key is not None]
    if sampled:
        nodes = sorted({active[k][1] for k in sampled})
        table = SamplingTable(scores[torch.tensor(nodes)], temperature, top_k)
        row = {n: r for r, n in enumerate(nodes)}
        u = torch.tensor([row_uniform(active[k][0].key, len(active[k][0].tokens)) for k in sampled],
                         dtype=torch.float64)
        picks = table.draw(torch.tensor([row[active[k][1]] for k in sampled]), u).tolist()
        for k, t in zip(sampled, picks):
            out[k] = t
    return out
