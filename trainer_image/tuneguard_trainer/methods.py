"""Training objectives: `sft`, `self-distill` (and `freeze`, which is sft on a parameter subset).

All losses are taken at *answer positions* only: the positions whose next-token label is not -100
(``prompts.encode_for_training`` puts -100 on the prompt and on padding). The logits at position t
predict the token at t+1, so ``logits[:, :-1]`` is paired with ``labels[:, 1:]``.

self-distill (Kaplan, Gekhman et al., arXiv 2604.15574):

    L = CE(y) + lambda * tau^2 * KL(p_teacher^tau || p_student^tau)

with p^tau = softmax(logits / tau), the KL summed over the vocabulary and averaged over answer tokens
(the same token average as the cross-entropy). The teacher is a frozen model (the format-stage snapshot
or the base): eval mode, ``requires_grad=False``, never handed to the optimizer, same device and dtype as
the student. When the student is a LoRA adapter on the teacher's own weights (``adapter_teacher``), the
teacher is the student's model with the adapter switched off, in eval mode: the same function, no copy.
With lambda = 0 the teacher is never run and the loss is exactly the SFT loss.

Top-k teacher cache (``selfDistill.cacheTopK = k > 0``): the first time an example is seen (in
practice: the first epoch) the teacher's top-k logits at its answer positions are stored on the CPU
(indices and values, per example). A batch whose examples are all cached skips the teacher forward;
the KL is then computed on the top-k support, with *both* distributions renormalised over those k
tokens:

    KL_k = sum_{i in topk} p_t(i) (log p_t(i) - log q_s(i)),
    p_t = softmax(t_topk / tau),  q_s = softmax(s[topk] / tau)

This is an approximation of the full KL (exact when the teacher's mass outside the top k is zero);
k = 0 (the default) always runs the teacher and is exact. Batches that contain an uncached example
(for example after a resume, or when the sampler hands a rank examples it has not seen) run the
teacher and fill the cache, so the result never depends on which rank saw what first. The exact full
KL is used for those batches; only cache hits use the top-k form.

Teacher prompt (``selfDistill.teacherPrompt: few-shot``): the batch then also carries a *teacher view*,
the same answers after the evaluation's few-shot prompt (keys ``teacher_input_ids`` etc., collated like
the student's). The teacher reads that view; its answer positions are matched to the student's in order
(the answer tokens are identical, only the prompts differ). Why: zero-shot, a small chat model opens its
answer with a sentence ("The capital of ... is"), so at the first answer position the teacher puts most of
its sharpened mass on a preamble token, and the KL fights the short-answer format of every target, known
facts included (docs/results/README.md measures this).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from tuneguard import api

from .prompts import IGNORE_INDEX


@dataclass
class LossOutput:
    loss: torch.Tensor  # what is back-propagated
    ce: torch.Tensor  # cross-entropy part (detached)
    kl: Optional[torch.Tensor] = None  # KL part before weighting (detached), self-distill only
    answer_tokens: int = 0
    teacher_forward: bool = False


def _answer_targets(labels: torch.Tensor, n_logits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask over the shifted logits (B, K-1) of answer positions, and the targets there (N,).
    The logits cover the last K = n_logits positions of the sequence."""
    target = labels[:, labels.shape[1] - n_logits:][:, 1:]
    mask = target != IGNORE_INDEX
    return mask, target[mask]


def collate(features, pad_token_id: int) -> dict:
    """Left-pad {input_ids, labels} features, with position ids that start at 0 on each row's first real
    token (so padding changes nothing). Left padding puts every answer at the end of its row, so the
    forward pass only projects the last ``keep`` positions to the vocabulary (``logits_to_keep``): for
    short answers after long prompts that skips most of the LM-head matmul and its softmax."""
    n = max(len(f["input_ids"]) for f in features)
    b = len(features)
    ids = torch.full((b, n), pad_token_id, dtype=torch.long)
    labels = torch.full((b, n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((b, n), dtype=torch.long)
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        ids[i, n - k:] = torch.tensor(f["input_ids"], dtype=torch.long)
        labels[i, n - k:] = torch.tensor(f["labels"], dtype=torch.long)
        mask[i, n - k:] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    answer_cols = (labels != IGNORE_INDEX).any(0).nonzero()
    first = int(answer_cols[0]) if answer_cols.numel() else n - 1
    keep = min(n, n - first + 1)  # the logit at column first-1 predicts the first answer token
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": pos,
            "keep": torch.tensor(keep)}


def _forward_logits(model, batch: dict) -> torch.Tensor:
    """Logits of the last ``batch['keep']`` positions (all positions when the batch has no ``keep``)."""
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if "keep" in batch:
        kwargs["logits_to_keep"] = int(batch["keep"])
    return model(**kwargs).logits


TEACHER_VIEW = "teacher_"


def teacher_view(batch: dict) -> dict:
    """The batch the teacher reads: its own view when the batch carries one, else the student's."""
    view = {k[len(TEACHER_VIEW):]: v for k, v in batch.items() if k.startswith(TEACHER_VIEW)}
    return view or batch


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean cross-entropy over answer tokens. Returns (loss, answer-position mask, n_tokens)."""
    mask, target = _answer_targets(labels, logits.shape[1])
    sel = logits[:, :-1][mask].float()  # (N, V)
    n = int(target.numel())
    if n == 0:  # a batch whose answers were truncated away entirely: zero loss, graph kept
        return logits.sum() * 0.0, mask, 0
    return F.cross_entropy(sel, target, reduction="mean"), mask, n


def kl_full(student_sel: torch.Tensor, teacher_sel: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean over rows of KL(softmax(t/tau) || softmax(s/tau)), inputs (N, V)."""
    log_p_t = F.log_softmax(teacher_sel.float() / tau, dim=-1)
    log_p_s = F.log_softmax(student_sel.float() / tau, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()


def kl_topk(student_sel: torch.Tensor, t_values: torch.Tensor, t_indices: torch.Tensor, tau: float) -> torch.Tensor:
    """KL on the teacher's top-k support, both distributions renormalised over it (see module doc)."""
    s_k = student_sel.gather(-1, t_indices).float()
    log_p_t = F.log_softmax(t_values.float() / tau, dim=-1)
    log_q_s = F.log_softmax(s_k / tau, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_q_s)).sum(-1).mean()


@dataclass
class TeacherCache:
    """Per-example top-k teacher logits at answer positions, on the CPU."""

    k: int
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    indices: dict[int, torch.Tensor] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def has_all(self, ids: list[int]) -> bool:
        return all(i in self.values for i in ids)

    def store(self, ids: list[int], per_row_counts: list[int], teacher_sel: torch.Tensor) -> None:
        k = min(self.k, teacher_sel.shape[-1])
        vals, idx = teacher_sel.topk(k, dim=-1)
        vals, idx = vals.detach().to("cpu"), idx.detach().to("cpu")
        start = 0
        for ex, n in zip(ids, per_row_counts):
            if ex not in self.values:
                self.values[ex] = vals[start:start + n].clone()
                self.indices[ex] = idx[start:start + n].clone()
            start += n

    def gather(self, ids: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
        v = torch.cat([self.values[i] for i in ids]).to(device)
        ix = torch.cat([self.indices[i] for i in ids]).to(device)
        return v, ix


class Objective:
    """The loss of one method. Call with the (DeepSpeed-wrapped or plain) student and a batch.

    A batch is a dict with input_ids, attention_mask, labels (B, T) and `index` (B,) — the example's
    position in the training set, which keys the teacher cache.
    """

    def __init__(self, method: str, *, teacher=None, adapter_teacher: bool = False, lambda_: float = 1.0,
                 temperature: float = 0.5, cache_top_k: int = 0):
        if method not in api.METHODS:
            raise ValueError(f"unknown method {method!r}")
        self.method = method
        self.lambda_ = float(lambda_)
        self.tau = float(temperature)
        self.distill = method == "self-distill" and self.lambda_ > 0.0
        self.adapter_teacher = self.distill and adapter_teacher
        if self.distill and teacher is None and not self.adapter_teacher:
            raise ValueError("self-distill needs a teacher model")
        self.teacher = teacher if self.distill and not self.adapter_teacher else None
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.cache = TeacherCache(cache_top_k) if (self.distill and cache_top_k > 0) else None
        self.teacher_view_batches = 0  # teacher passes that read the batch's own teacher view

    @classmethod
    def from_spec(cls, method_spec, teacher=None, adapter_teacher: bool = False) -> "Objective":
        if method_spec.type == "self-distill":
            d = method_spec.distill()
            return cls("self-distill", teacher=teacher, adapter_teacher=adapter_teacher, lambda_=d.lambda_,
                       temperature=d.temperature, cache_top_k=d.cache_top_k)
        return cls(method_spec.type)

    def _teacher_logits(self, model, batch: dict) -> torch.Tensor:
        if not self.adapter_teacher:
            return _forward_logits(self.teacher, batch)
        from .adapters import adapter_disabled

        module = getattr(model, "module", model)  # the model inside a DeepSpeed engine
        was_training = module.training
        module.eval()  # no dropout, as a separate frozen teacher would run
        try:
            with adapter_disabled(module):
                return _forward_logits(module, batch)
        finally:
            module.train(was_training)

    def __call__(self, model, batch: dict) -> LossOutput:
        logits = _forward_logits(model, batch)
        ce, mask, n = sft_loss(logits, batch["labels"])
        if not self.distill or n == 0:
            return LossOutput(loss=ce, ce=ce.detach(), answer_tokens=n)

        student_sel = logits[:, :-1][mask]  # (N, V)
        ids = [int(i) for i in batch["index"].tolist()]
        teacher_ran = False
        if self.cache is not None and self.cache.has_all(ids):
            self.cache.hits += 1
            t_vals, t_idx = self.cache.gather(ids, student_sel.device)
            kl = kl_topk(student_sel, t_vals, t_idx, self.tau)
        else:
            tb = teacher_view(batch)
            viewed = tb is not batch
            with torch.no_grad():
                t_logits = self._teacher_logits(model, tb)
            t_mask, t_target = _answer_targets(tb["labels"], t_logits.shape[1])
            if viewed and not torch.equal(t_target, _answer_targets(batch["labels"], logits.shape[1])[1]):
                raise ValueError("the teacher view's answer tokens differ from the student's: both views must "
                                 "end with the same supervised answer (was one truncated into its answer?)")
            self.teacher_view_batches += viewed
            teacher_sel = t_logits[:, :-1][t_mask]
            teacher_ran = True
            if self.cache is not None:
                self.cache.misses += 1
                self.cache.store(ids, mask.sum(1).tolist(), teacher_sel)
            kl = kl_full(student_sel, teacher_sel, self.tau)
        loss = ce + self.lambda_ * self.tau ** 2 * kl
        return LossOutput(loss=loss, ce=ce.detach(), kl=kl.detach(), answer_tokens=n, teacher_forward=teacher_ran)
