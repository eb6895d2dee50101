"""LoRA adapters (method.adapter): targets, the adapter-off teacher, the merged model, and the loop end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tuneguard import api
from tuneguard_trainer import adapters
from tuneguard_trainer.local import run_local
from tuneguard_trainer.methods import Objective

from ._jobs import drift_prompts_file, seed_known_triage, small_facts, tiny_model_dir, write_job
from ._tiny import tiny_llama, toy_batch


def _adapted(seed: int = 0, **spec):
    model = tiny_llama(seed)
    a = api.AdapterSpec(rank=4, **spec)
    return adapters.wrap(model, a, adapters.target_modules(model, a)), a


def _logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_presets_pick_the_right_linear_modules():
    model = tiny_llama()
    pick = lambda **kw: adapters.target_modules(model, api.AdapterSpec(**kw))  # noqa: E731
    attn, mlp, every = pick(targets="attention"), pick(targets="mlp"), pick()
    assert attn and all(".self_attn." in n for n in attn) and len(attn) == 4 * 2  # q k v o, 2 layers
    assert mlp and all(".mlp." in n for n in mlp) and len(mlp) == 3 * 2  # gate up down
    assert sorted(every) == sorted(attn + mlp) and "lm_head" not in every  # all-linear is the default
    qv = [n for n in attn if n.endswith(("q_proj", "v_proj"))]
    assert pick(targetPatterns=[r".*\.q_proj", r".*\.v_proj"]) == qv == pick(targetPatterns=["q_proj|v_proj"])


def test_a_pattern_that_matches_nothing_names_itself_and_real_modules():
    with pytest.raises(adapters.AdapterError, match=r"targetPatterns: 'query' match no linear module.*q_proj"):
        adapters.target_modules(tiny_llama(), api.AdapterSpec(targetPatterns=["q_proj", "query"]))


def test_only_adapter_parameters_train_and_the_base_is_untouched():
    model, _ = _adapted()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        Objective("sft")(model, toy_batch()).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    assert any(".lora_B." in n for n in changed)  # B leaves zero: the adapter now changes the function


def test_merged_model_equals_base_plus_adapter():
    model, _ = _adapted()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.5)
    plain = tiny_llama(seed=1)  # other weights: every one must come from the merged state dict
    plain.load_state_dict(adapters.merged_state_dict(model), strict=True)
    batch = toy_batch()
    torch.testing.assert_close(_logits(plain, batch), _logits(model, batch), rtol=1e-4, atol=1e-5)
    # and the base weights themselves were not merged in place
    with adapters.adapter_disabled(model):
        torch.testing.assert_close(_logits(model, batch), _logits(tiny_llama(0), batch))


def test_adapter_off_teacher_equals_a_separate_snapshot_teacher():
    """Self-distill's loss with the adapter-off teacher is the loss with a frozen copy of the snapshot."""
    snapshot = tiny_llama(0)
    model, _ = _adapted(0)
    with torch.no_grad():  # a trained adapter: the student differs from its teacher
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.3)
    batch = toy_batch()
    shared = Objective("self-distill", adapter_teacher=True)(model, batch)
    separate = Objective("self-distill", teacher=copy.deepcopy(snapshot))(model, batch)
    assert shared.kl > 0 and shared.teacher_forward
    torch.testing.assert_close(shared.loss, separate.loss)
    assert model.training  # the teacher pass put the student back in training mode


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": tiny_model_dir(root), "data": small_facts(root, n_per_relation=3)}


LORA = {"rank": 4, "alpha": 8, "targets": "attention"}


def test_lora_self_distill_runs_end_to_end_with_the_adapter_off_teacher(tmp_path, assets, capsys):
    """Format stage (on seeded Known facts), then LoRA self-distill: the report says what trained and the
    teacher was the adapter-off model; best-adapter and best-model (merged) are written and agree."""
    job = write_job(tmp_path, model=assets["model"], data=assets["data"],
                    method={"type": "self-distill", "adapter": LORA},
                    training={"maxSteps": 6, "learningRate": 3e-3})
    out = tmp_path / "out"
    seed_known_triage(job, out)
    assert run_local(job, out, "cpu") == 0
    printed = capsys.readouterr().out
    assert printed.count("best model:") == 1 and "best adapter (LoRA, 3,584 parameters; best-model is it merged)" in printed
    rep = json.loads((out / "report.json").read_text())
    a = rep["method"]["adapter"]
    assert a["rank"] == 4 and a["modules"] == 8 and 0 < a["trainable_share"] < 0.1
    assert rep["method"]["teacher_is_adapter_off"] is True
    assert rep["stages"][1]["ran"] is True  # the adapter sits on the format-stage snapshot
    assert rep["reference"]["model"] == "format-stage"
    assert rep["final"]["figures"]["param_drift_l2"] > 0 and rep["final"]["figures"]["drift_kl"] > 0
    assert rep["outputs"]["best_adapter"] == str(out / "best-adapter")
    assert (out / "best-adapter" / "adapter_config.json").exists()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "best-model")
    snap = AutoModelForCausalLM.from_pretrained(assets["model"])
    fs = torch.load(out / "format-stage.pt", weights_only=False)
    snap.load_state_dict(fs["state"])
    stacked = PeftModel.from_pretrained(snap, out / "best-adapter")
    batch = toy_batch(vocab=merged.config.vocab_size)
    torch.testing.assert_close(_logits(merged, batch), _logits(stacked, batch), rtol=1e-4, atol=1e-5)
    # the resumable checkpoint holds the adapter, not the frozen base (DeepSpeed keeps a tied head's alias)
    ckpt = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "state"
    (states,) = ckpt.glob("*model_states.pt")
    saved = torch.load(states, weights_only=False)["module"]
    assert sum(".lora_" in k for k in saved) == 2 * a["modules"]
    assert not [k for k in saved if ".lora_" not in k and not k.endswith("lm_head.weight")]


def test_lora_rollback_restores_the_reference(tmp_path, assets):
    """No evaluation within budget: the rollback resets the adapter, so the delivered model is the base."""
    job = write_job(tmp_path, model=assets["model"], data=assets["data"], method={"type": "sft", "adapter": LORA},
                    formatStage={"enabled": False}, training={"maxSteps": 4, "learningRate": 3e-3},
                    evaluation={"intervalSteps": 2, "maxProbeSize": 4, "driftPrompts": str(drift_prompts_file(tmp_path))},
                    guardrails={"maxDriftKL": 1e-9, "action": "rollback"})
    out = tmp_path / "out"
    assert run_local(job, out, "cpu") == 0
    rep = json.loads((out / "report.json").read_text())
    assert "rollback" in rep["stopped_early"] and rep["best"] is None
    from transformers import AutoModelForCausalLM

    delivered = AutoModelForCausalLM.from_pretrained(out / "best-model").state_dict()
    loaded = AutoModelForCausalLM.from_pretrained(assets["model"])
    base = loaded.state_dict()
    # the report counts the model as loaded, without the adapter the fact stage trained on it
    assert rep["model"]["parameters"] == sum(p.numel() for p in loaded.parameters())
    assert rep["model"]["architecture"] == type(loaded).__name__
    assert delivered.keys() == base.keys()
    assert all(torch.equal(delivered[k], base[k]) for k in base)


def test_adapter_with_freeze_or_zero3_is_refused_offline():
    from tuneguard.validation import InvalidManifest, parse_job
    from tests.bad_manifests import valid_job

    doc = valid_job()
    doc["spec"]["method"] = {"type": "freeze", "freeze": {"preset": "attention-only"}, "adapter": {}}
    with pytest.raises(InvalidManifest, match=r"spec\.method\.adapter.*freeze"):
        parse_job(doc)
    doc["spec"]["method"] = {"type": "sft", "adapter": {}}
    doc["spec"]["deepspeed"] = {"zeroStage": 3}
    with pytest.raises(InvalidManifest, match=r"spec\.deepspeed\.zeroStage.*ZeRO-3"):
        parse_job(doc)
