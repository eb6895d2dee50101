"""Losses: sft on answer tokens, self-distill = CE + lambda*tau^2*KL, teacher cache, lambda=0 == sft."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tuneguard_trainer.methods import Objective, kl_full, kl_topk, sft_loss

from ._tiny import tiny_llama, toy_batch


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sft_only_answer_tokens():
    model = tiny_llama()
    batch = toy_batch()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, mask, n = sft_loss(logits, batch["labels"])
    # reference: HF-style shifted CE with ignore_index
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 64), batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(loss, ref, atol=1e-6)
    assert n == int((batch["labels"][:, 1:] != -100).sum())


def test_lambda_zero_equals_sft_loss_and_grads():
    student = tiny_llama(seed=1)
    twin = copy.deepcopy(student)
    teacher = tiny_llama(seed=2)
    batch = toy_batch()
    out_sft = Objective("sft")(student, batch)
    out_sft.loss.backward()
    out_sd = Objective("self-distill", teacher=teacher, lambda_=0.0, temperature=0.5)(twin, batch)
    out_sd.loss.backward()
    assert torch.equal(out_sft.loss, out_sd.loss)
    g1, g2 = _grads(student), _grads(twin)
    assert g1.keys() == g2.keys() and all(torch.equal(g1[k], g2[k]) for k in g1)
    assert not out_sd.teacher_forward


def test_self_distill_adds_weighted_kl():
    student, teacher = tiny_llama(seed=1), tiny_llama(seed=2)
    batch = toy_batch()
    lam, tau = 0.7, 0.5
    out = Objective("self-distill", teacher=teacher, lambda_=lam, temperature=tau)(student, batch)
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"][:, 1:] != -100
    ps, pt = F.log_softmax(s[:, :-1][mask] / tau, -1), F.log_softmax(t[:, :-1][mask] / tau, -1)
    kl = F.kl_div(ps, pt, log_target=True, reduction="batchmean")
    assert torch.allclose(out.kl, kl, atol=1e-5)
    assert torch.allclose(out.loss.detach(), out.ce + lam * tau**2 * kl, atol=1e-5)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_kl_is_zero_against_itself_and_topk_full_support_is_exact():
    x = torch.randn(5, 64)
    assert kl_full(x, x, 0.5).abs() < 1e-6
    y = torch.randn(5, 64)
    vals, idx = y.topk(64, dim=-1)
    assert torch.allclose(kl_topk(x, vals, idx, 0.5), kl_full(x, y, 0.5), atol=1e-5)


def _views(extra_prompt: int, answers=((10, 20, 2), (11, 21, 2), (12, 2))):
    """Student and teacher features of the same answers; the teacher's prompts are longer."""
    g = torch.Generator().manual_seed(0)
    student, teacher = [], []
    for i, ans in enumerate(answers):
        prompt = torch.randint(3, 64, (4 + i,), generator=g).tolist()
        extra = torch.randint(3, 64, (extra_prompt,), generator=g).tolist()
        student.append({"input_ids": prompt + list(ans), "labels": [-100] * len(prompt) + list(ans)})
        teacher.append({"input_ids": extra + prompt + list(ans), "labels": [-100] * (extra_prompt + len(prompt)) + list(ans)})
    return student, teacher


def test_teacher_reads_its_own_view_of_the_same_answers():
    from tuneguard_trainer.methods import TEACHER_VIEW, collate

    student, teacher = tiny_llama(seed=1), tiny_llama(seed=2)
    s_feats, t_feats = _views(extra_prompt=5)
    batch = collate(s_feats, 0)
    batch["index"] = torch.arange(len(s_feats))
    obj = Objective("self-distill", teacher=teacher, lambda_=1.0, temperature=0.5)
    plain = obj(student, batch)
    t_batch = collate(t_feats, 0)
    viewed = obj(student, {**batch, **{TEACHER_VIEW + k: v for k, v in t_batch.items()}})
    # the KL against the teacher reading its own (longer) prompts, answer position by answer position
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    position_ids=batch["position_ids"]).logits
        t = teacher(input_ids=t_batch["input_ids"], attention_mask=t_batch["attention_mask"],
                    position_ids=t_batch["position_ids"]).logits
    s_sel = s[:, :-1][batch["labels"][:, 1:] != -100]
    t_sel = t[:, :-1][t_batch["labels"][:, 1:] != -100]
    assert torch.allclose(viewed.kl, kl_full(s_sel, t_sel, 0.5), atol=1e-5)
    assert torch.equal(viewed.ce, plain.ce) and not torch.allclose(viewed.kl, plain.kl)
    # a view whose answers differ is refused, not silently misaligned
    _, other = _views(extra_prompt=5, answers=((10, 20, 2), (11, 21, 2), (13, 2)))
    o_batch = collate(other, 0)
    with pytest.raises(ValueError, match="answer tokens differ"):
        obj(student, {**batch, **{TEACHER_VIEW + k: v for k, v in o_batch.items()}})


def test_teacher_cache_skips_teacher_after_first_pass():
    student, teacher = tiny_llama(seed=1), tiny_llama(seed=2)
    obj = Objective("self-distill", teacher=teacher, lambda_=1.0, temperature=0.5, cache_top_k=64)
    batch = toy_batch()
    first = obj(student, batch)
    second = obj(student, batch)
    assert first.teacher_forward and not second.teacher_forward
    assert obj.cache.hits == 1 and obj.cache.misses == 1
    # k = vocab: the cached top-k KL equals the exact one
    assert torch.allclose(first.loss, second.loss, atol=1e-5)


@pytest.mark.parametrize("method", ["sft", "self-distill", "freeze"])
def test_every_method_lowers_loss(method):
    from tuneguard_trainer import freezing
    from tuneguard import api

    torch.manual_seed(0)
    student = tiny_llama(seed=3)
    teacher = copy.deepcopy(student) if method == "self-distill" else None
    if method == "freeze":
        plan = freezing.plan(student, api.FreezeSpec(preset="mlp-only"))
        freezing.apply(student, plan)
    obj = Objective(method, teacher=teacher, lambda_=1.0, temperature=0.5)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    batch = toy_batch()
    losses = []
    for _ in range(15):
        opt.zero_grad()
        out = obj(student, batch)
        out.loss.backward()
        opt.step()
        losses.append(float(out.ce))
    assert losses[-1] < losses[0] * 0.9, losses


def _right_padded(features, pad_token_id: int) -> dict:
    """The plain layout (right padding, every position projected): the reference the trainer's must equal."""
    n = max(len(f["input_ids"]) for f in features)
    pad = lambda xs, v: xs + [v] * (n - len(xs))
    return {"input_ids": torch.tensor([pad(f["input_ids"], pad_token_id) for f in features]),
            "labels": torch.tensor([pad(f["labels"], -100) for f in features]),
            "attention_mask": torch.tensor([pad([1] * len(f["input_ids"]), 0) for f in features])}


def test_left_padded_batch_with_kept_logits_equals_full_right_padded_loss():
    from tuneguard_trainer.methods import collate

    torch.manual_seed(0)
    feats = []
    for n_prompt, n_answer in ((9, 3), (5, 2), (12, 4)):
        ids = torch.randint(3, 64, (n_prompt + n_answer,)).tolist()
        feats.append({"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]})
    left = collate(feats, pad_token_id=0)
    right = _right_padded(feats, pad_token_id=0)
    assert int(left["keep"]) == 5 and left["input_ids"].shape[1] == 16
    student, teacher = tiny_llama(seed=1), tiny_llama(seed=2)
    for obj in (Objective("sft"), Objective("self-distill", teacher=teacher, lambda_=1.0, temperature=0.5)):
        a = obj(student, {**left, "index": torch.arange(3)})
        b = obj(student, {**right, "index": torch.arange(3)})
        assert a.answer_tokens == b.answer_tokens == 9
        assert torch.allclose(a.loss, b.loss, atol=1e-5), (a.loss, b.loss)
