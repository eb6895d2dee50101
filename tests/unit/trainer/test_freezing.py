"""Freeze presets and patterns on Llama-style and Gemma 3 names; tied embeddings; no-match errors."""

from __future__ import annotations

import pytest
import torch

from tuneguard import api
from tuneguard_trainer import freezing

from ._tiny import tiny_gemma3, tiny_llama, toy_batch


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_presets(build):
    model = build()
    att = freezing.plan(model, api.FreezeSpec(preset="attention-only"))
    assert att.trainable and all(".self_attn." in n for n in att.trainable)
    assert any("q_proj" in n for n in att.trainable) and any("o_proj" in n for n in att.trainable)
    mlp = freezing.plan(model, api.FreezeSpec(preset="mlp-only"))
    assert mlp.trainable and all(".mlp." in n for n in mlp.trainable)
    top = freezing.plan(model, api.FreezeSpec(preset="top-layers", top_layers=1))
    assert top.trainable and all(".layers.1." in n for n in top.trainable)
    for p in (att, mlp, top):
        assert not any("embed" in n or "lm_head" in n for n in p.trainable)


def test_top_layers_more_than_model_is_an_error():
    with pytest.raises(freezing.FreezeError, match="more than the model's 2 layers"):
        freezing.plan(tiny_llama(), api.FreezeSpec(preset="top-layers", top_layers=5))


def test_pattern_matching_nothing_names_pattern_and_real_names():
    with pytest.raises(freezing.FreezeError) as e:
        freezing.plan(tiny_llama(), api.FreezeSpec(trainable_patterns=["self_attn", "transformer\\.h\\."]))
    msg = str(e.value)
    assert "'transformer\\\\.h\\\\.'" in msg or "transformer\\.h\\." in msg
    assert "model.layers.0.self_attn.q_proj.weight" in msg
    assert "self_attn'" not in msg.split("match no")[0].replace("transformer", "")  # only the bad one named


def test_tied_lm_head_pattern_trains_shared_embedding():
    model = tiny_llama(tie=True)
    plan = freezing.plan(model, api.FreezeSpec(trainable_patterns=["lm_head"]))
    assert plan.trainable == ["model.embed_tokens.weight"]
    assert plan.tied == {"model.embed_tokens.weight": ["lm_head.weight"]}


def test_frozen_tensors_stay_bit_identical():
    model = tiny_llama()
    plan = freezing.plan(model, api.FreezeSpec(preset="attention-only"))
    freezing.apply(model, plan)
    before = freezing.digests(model, plan.frozen)
    opt = torch.optim.AdamW(freezing.trainable_parameters(model), lr=1e-2, weight_decay=0.1)
    batch = toy_batch()
    for _ in range(3):
        opt.zero_grad()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        opt.step()
    check = freezing.verify_frozen(model, before)
    assert check["identical"] and check["checked_tensors"] == len(plan.frozen)
    # and the check does notice a change
    with torch.no_grad():
        dict(model.named_parameters())[plan.frozen[0]].add_(1e-7)
    assert not freezing.verify_frozen(model, before)["identical"]
