"""Which parameters a `freeze` job trains, and the proof afterwards that the rest did not move.

Presets are regular expressions over parameter names that fit both Llama-style models (SmolLM2:
``model.layers.3.self_attn.q_proj.weight``, ``model.layers.3.mlp.gate_proj.weight``) and Gemma 3
(``model.layers.3.self_attn.q_norm.weight``, or ``model.language_model.layers.3...`` in the
multimodal wrapper):

- ``attention-only``: every parameter under ``layers.N.self_attn.`` (q/k/v/o projections and, for
  Gemma 3, the q/k norms). MLPs, layer norms, embeddings and the head stay frozen.
- ``mlp-only``: every parameter under ``layers.N.mlp.`` (gate/up/down projections).
- ``top-layers`` with ``topLayers: N``: everything inside the last N decoder layers (attention, MLP
  and their norms). The final norm, embeddings and head stay frozen.

``trainablePatterns`` are regular expressions searched (``re.search``) in each parameter name; a
parameter is trained if any pattern matches. Every pattern must match at least one parameter,
otherwise the job fails before training with the pattern and some real parameter names.

Embeddings and the LM head: no preset trains them. Many small models (SmolLM2, Gemma 3) *tie* the
output head to the input embedding, so ``lm_head.weight`` is not a separate tensor: PyTorch lists it
once, under ``model.embed_tokens.weight``. A pattern is matched against every alias of a tensor, so
``lm_head`` in trainablePatterns trains the shared matrix — which also changes the input embeddings.
The report records which trained names were tied.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import torch

LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")

PRESETS = {
    "attention-only": [r"(?:^|\.)layers\.\d+\.self_attn\."],
    "mlp-only": [r"(?:^|\.)layers\.\d+\.mlp\."],
}


class FreezeError(ValueError):
    """A freeze spec that does not fit the model (reported before training)."""


@dataclass
class FreezePlan:
    trainable: list[str]  # canonical parameter names (as in named_parameters())
    frozen: list[str]
    patterns: list[str]
    tied: dict[str, list[str]] = field(default_factory=dict)  # canonical name -> other aliases

    def summary(self, model) -> dict:
        params = dict(model.named_parameters())
        n_train = sum(params[n].numel() for n in self.trainable)
        n_all = sum(p.numel() for p in params.values())
        return {
            "patterns": self.patterns,
            "trainable_tensors": len(self.trainable),
            "frozen_tensors": len(self.frozen),
            "trainable_parameters": n_train,
            "total_parameters": n_all,
            "trainable_share": round(n_train / max(n_all, 1), 6),
            "tied": {k: v for k, v in self.tied.items()},
        }


def _aliases(model) -> dict[str, list[str]]:
    """canonical name -> all names of that tensor (tied weights have several)."""
    by_id: dict[int, str] = {}
    out: dict[str, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        canon = by_id.setdefault(id(p), name)
        out.setdefault(canon, []).append(name)
    return out


def num_layers(names) -> int:
    idx = [int(m.group(1)) for n in names if (m := LAYER_RE.search(n))]
    if not idx:
        raise FreezeError("top-layers: the model has no parameters named like '...layers.N....'")
    return max(idx) + 1


def patterns_for(freeze_spec, names: list[str]) -> list[str]:
    if freeze_spec.trainable_patterns:
        return list(freeze_spec.trainable_patterns)
    preset = freeze_spec.preset
    if preset in PRESETS:
        return list(PRESETS[preset])
    if preset == "top-layers":
        n_layers = num_layers(names)
        k = int(freeze_spec.top_layers or 1)
        if k > n_layers:
            raise FreezeError(f"method.freeze.topLayers: {k} is more than the model's {n_layers} layers; "
                              f"use 1..{n_layers}")
        layers = "|".join(str(i) for i in range(n_layers - k, n_layers))
        return [rf"(?:^|\.)layers\.(?:{layers})\."]
    raise FreezeError(f"unknown freeze preset {preset!r}")


def plan(model, freeze_spec) -> FreezePlan:
    aliases = _aliases(model)
    all_names = [a for names in aliases.values() for a in names]
    pats = patterns_for(freeze_spec, all_names)
    compiled = [(p, re.compile(p)) for p in pats]
    trainable, hit = [], {p: 0 for p in pats}
    for canon, names in aliases.items():
        matched = False
        for p, rx in compiled:
            if any(rx.search(n) for n in names):
                hit[p] += 1
                matched = True
        if matched:
            trainable.append(canon)
    missing = [p for p, c in hit.items() if c == 0]
    if missing:
        sample = _sample_names(all_names)
        where = "method.freeze.trainablePatterns" if freeze_spec.trainable_patterns else f"method.freeze.preset {freeze_spec.preset}"
        raise FreezeError(
            f"{where}: pattern(s) {', '.join(repr(p) for p in missing)} match no parameter of this model; "
            f"parameter names look like: {', '.join(sample)}"
        )
    frozen = [c for c in aliases if c not in set(trainable)]
    if not frozen:
        raise FreezeError("method.freeze: the patterns match every parameter, so nothing is frozen; "
                          "use method.type sft instead, or narrow the patterns")
    tied = {c: aliases[c][1:] for c in trainable if len(aliases[c]) > 1}
    return FreezePlan(trainable=trainable, frozen=frozen, patterns=pats, tied=tied)


def _sample_names(names: list[str], n: int = 8) -> list[str]:
    """A few representative names: the first ones, one layer's worth, and the last ones."""
    picked: list[str] = []
    layer0 = [x for x in names if re.search(r"(?:^|\.)layers\.0\.", x)]
    for x in names[:2] + layer0[:4] + names[-2:]:
        if x not in picked:
            picked.append(x)
    return picked[:n]


def apply(model, freeze_plan: FreezePlan) -> None:
    train = set(freeze_plan.trainable)
    for name, p in model.named_parameters():
        p.requires_grad_(name in train)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().to("cpu").contiguous()
    # view as bytes so that any dtype (bf16 included) hashes bit-exactly
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def digests(model, names: list[str]) -> dict[str, str]:
    params = dict(model.named_parameters())
    return {n: tensor_digest(params[n]) for n in names}


def verify_frozen(model, before: dict[str, str]) -> dict:
    """Compare the frozen tensors with their digests taken before training."""
    after = digests(model, list(before))
    changed = [n for n in before if before[n] != after[n]]
    return {
        "checked_tensors": len(before),
        "identical": not changed,
        "changed": changed[:20],
        "method": "sha256 of the raw bytes of each frozen tensor before and after training",
    }
