r"""LoRA adapters (``method.adapter``), built with peft: which layers get one, wrapping, the teacher, saving.

The adapter sits on the model the fact stage starts from (the format-stage snapshot, or the base model when
that stage is off). peft initialises every B matrix to zero, so before the first step the wrapped model
computes exactly the reference's function; three things follow:

- the self-distill teacher with ``teacher: format-stage`` is the same weights with the adapter switched off
  (:func:`adapter_disabled`, peft's own context manager): no second copy of the model;
- rollback to the reference restores the adapter's initial state (:func:`adapter_state`), a few MB;
- parameter drift is the norm of the adapter's weight deltas (:func:`delta_sq_norm`), the base being frozen.

Target presets (:data:`PRESETS`) are the freeze presets' regular expressions over the *linear modules'*
names: ``attention`` = the q/k/v/o projections under ``layers.N.self_attn.``, ``mlp`` = the projections under
``layers.N.mlp.``, ``all-linear`` = both (never the output head: on tied models it is the input embedding).
``targetPatterns`` are regular expressions full-matched against each linear module's name and against its last
component, so ``q_proj`` and ``.*\.q_proj`` both pick every query projection; each must match at least one
linear module, otherwise the job fails before training with real names to copy.

The best model is written twice by checkpoints.CheckpointManager.save_best_model: the adapter alone
(``best-adapter/``, peft's format) and merged into a full Hugging Face model directory (``best-model/``,
W + (alpha/r) B A computed by :func:`merged_state_dict`; the live model is never merged in place, since
merging and unmerging rounds the frozen weights).
"""

from __future__ import annotations

import contextlib
import re

import torch

from .freezing import PRESETS as FREEZE_PRESETS

PRESETS = {
    "attention": FREEZE_PRESETS["attention-only"],
    "mlp": FREEZE_PRESETS["mlp-only"],
    "all-linear": FREEZE_PRESETS["attention-only"] + FREEZE_PRESETS["mlp-only"],
}


class AdapterError(ValueError):
    """An adapter spec that does not fit the model (reported before training)."""


def linear_modules(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def target_modules(model, spec) -> list[str]:
    """The full names of the linear modules that get an adapter (spec: api.AdapterSpec)."""
    names = linear_modules(model)
    if spec.target_patterns:
        chosen, missing = set(), []
        for p in spec.target_patterns:
            hit = {n for n in names if re.fullmatch(p, n) or re.fullmatch(p, n.rsplit(".", 1)[-1])}
            if not hit:
                missing.append(p)
            chosen |= hit
        if missing:
            sample = [n for n in names if ".layers.0." in n][:4] + names[-1:]
            raise AdapterError(
                f"method.adapter.targetPatterns: {', '.join(repr(p) for p in missing)} match no linear module "
                f"of this model; linear modules are named like: {', '.join(sample)}")
        return [n for n in names if n in chosen]
    preset = spec.resolved_targets()
    pats = [re.compile(p) for p in PRESETS[preset]]
    chosen = [n for n in names if any(p.search(n + ".") for p in pats)]
    if not chosen:
        raise AdapterError(f"method.adapter.targets {preset}: no linear module of this model is named like "
                           f"'...layers.N.self_attn.*' or '...layers.N.mlp.*'; use targetPatterns")
    return chosen


def wrap(model, spec, targets: list[str]):
    """The peft model over ``model`` (modified in place: the adapters are injected into its modules); only
    the adapters' parameters require grad."""
    from peft import LoraConfig, get_peft_model

    alpha = int(spec.alpha) if float(spec.alpha).is_integer() else float(spec.alpha)
    cfg = LoraConfig(r=spec.rank, lora_alpha=alpha, lora_dropout=spec.dropout, target_modules=targets,
                     bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def is_adapted(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def adapter_disabled(model):
    """The frozen model the adapter sits on, for the duration of a ``with`` block."""
    return model.disable_adapter() if is_adapted(model) else contextlib.nullcontext()


def adapter_state(model) -> dict:
    """The adapter's weights (peft's keys), on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter_state(model, state: dict) -> None:
    from peft import set_peft_model_state_dict

    with torch.no_grad():
        set_peft_model_state_dict(model, state)


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and m.active_adapters:
            yield name, m


def _delta(layer) -> torch.Tensor:
    """The sum of the layer's active adapters' weight deltas, (alpha/r) B A, in the base weight's shape."""
    return sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)


def delta_sq_norm(model) -> float:
    """sum over adapted layers of ||delta W||^2 (the base weights are frozen, so this is ||theta - theta_0||^2)."""
    with torch.no_grad():
        return sum(float(_delta(m).double().pow(2).sum()) for _, m in _lora_layers(model))


def merged_state_dict(model) -> dict:
    """The base model's own state dict (its own key names) with every adapter merged: W + delta W."""
    base = model.get_base_model()
    deltas = {}
    with torch.no_grad():
        for name, m in _lora_layers(base):
            deltas[name + ".base_layer.weight"] = _delta(m)
        out = {}
        for k, v in base.state_dict().items():
            if ".lora_" in k:
                continue
            t = v + deltas[k].to(v.dtype) if k in deltas else v
            out[k.replace(".base_layer.", ".")] = t.detach().cpu().contiguous()
    return out


def summary(model, spec, targets: list[str]) -> dict:
    """What the report says about the adapter."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {**spec.wire(), "targets_resolved": spec.resolved_targets(), "modules": len(targets),
            "module_sample": targets[:4], "trainable_parameters": trainable,
            "trainable_share": round(trainable / max(total - trainable, 1), 6)}
