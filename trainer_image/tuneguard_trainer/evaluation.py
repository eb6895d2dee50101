"""Hallucination and drift figures of a model against the base model, every N steps and at the end.

``Evaluator(tokenizer, splits, base_model, ...)`` precomputes everything that depends on the base model
only; ``evaluate(model)`` returns exactly the keys of ``contract.FIGURES`` (below).

Questions are asked in the SliCK format: ``shots`` exemplars of the question's relation (fixed per
relation, drawn once by seed from the training examples as trained, i.e. showing their targets, so with
unknownPolicy abstain some exemplars answer "I don't know"; never the question itself) as earlier chat
turns, then the question. The same prompt for the base and the tuned model, so a small instruct model's
habit of answering in full sentences zero-shot does not count as not knowing; the exemplar prefix is
shared by a relation's questions and computed once. Training may use the same format
(``encode_for_training(..., shots=evaluator.shots_for)``) or the zero-shot one.

* known probe (held-out Known facts: HighlyKnown and MaybeKnown): ``known_accuracy`` = correct / n and
  ``hallucination_rate`` = wrong / n, where *wrong* = neither correct nor an abstention. The probe keeps
  only facts the base model answers correctly in this evaluation prompt (HighlyKnown under random few-shot
  prompts nearly implies it; MaybeKnown facts pass when this prompt's greedy answer is right), so the base
  model's hallucination rate is 0 by construction. It holds the first ``max_probe_size`` candidates that
  pass, classifying further candidates while too few have (``_first_qualifying``).
* ``new_fact_accuracy``: correct / n on the trained facts the base model did not know (``splits.new_facts``).
* unknown probe (held-out Unknown facts; any the base answers correctly in this prompt are removed):
  ``abstention_rate`` = abstained / n and ``fabrication_rate`` = wrong / n.
* ``drift_kl``: mean per-token KL(p_base || p_model) over the drift prompts' continuation positions; the
  continuation is the base model's greedy answer (up to ``drift_max_new_tokens`` tokens, including its stop
  token), teacher-forced through both models. The base log-probs are cached once: in full (float32) when
  they fit in ``drift_cache_mb``; otherwise the base's top ``drift_top_k`` tokens per position and one
  bucket for the rest, which gives the KL between the coarsened distributions, a lower bound of the full KL
  (the report says which).
* ``param_drift_l2``: ||theta - theta_0||_2 / ||theta_0||_2 over all parameters (a CPU float32 copy of the
  base parameters is taken at construction, or pass ``base_state``).
* ``eval_loss``: token-mean cross-entropy of the new facts' targets (answer + end-of-turn token).
* shift tests (``shifts``; not figures of their own, in ``last_shifts``): the first ``shift_size`` known-probe
  facts and new facts asked as a paraphrase, with seeded noise and in the other prompt format (shifts.py), in
  the same pass; per shift and probe the accuracy asked shifted, asked unshifted (the same facts as the probe
  asks them) and the gap, unshifted minus shifted.
  ``decoding`` records the settings every evaluation uses (greedy, stop tokens, prompt), the same for every
  model.

How answers are read (``mode``); both give generation-based normalised exact match (up to floating-point
ties between batched passes):

* ``"decode"`` (default): greedy decoding of every example (short, batched, the few-shot prefix
  KV-cached), each row stopped as soon as its text can be neither an accepted answer nor (where it
  counts) an abstention: normalisation is prefix-monotone and an abstention is an answer that *opens*
  with an abstention phrase (``prompts.is_abstention``), so it is wrong whatever follows. The fastest
  mode on CPU, and on an H100 the decoder beat teacher forcing even without the early stop
  (docs/results/): the answers are a few tokens after a few-shot prompt of hundreds, so the prompt pass
  dominates, and decoding runs it once per example.
* ``"generate"``: greedy decoding of every example to its stop token (the reference the tests compare
  ``decode``'s early stop with).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from tuneguard import contract

from .data import QAExample
from .prompts import FewShotExemplars, PromptFormat, classify, could_abstain, could_become
from .scoring import decode, eval_mode, teacher_forced
from .shifts import gap, shifted

log = logging.getLogger(__name__)

MODES = ("decode", "generate")


@dataclass
class _Item:
    ex: QAExample
    prompt: list[int]


def _strip_prefix(name: str) -> str:
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def _first_qualifying(classify, pools, keeps, n: int):
    """Per pool, its first ``n`` items (in order) whose class passes its ``keeps`` test, and how many items
    were classified for each. Classes come from ``classify(items)``, one call per round for all pools
    together; the first round takes 2n of each, later ones what the pool's pass rate so far says is still
    needed (x1.25), so a model that answers few candidates still gets a full probe while a well-answered
    pool costs no more than 2n."""
    kept: list = [[] for _ in pools]
    seen = [0] * len(pools)
    while True:
        takes = []
        for k, pool in enumerate(pools):
            need = n - len(kept[k])
            if need <= 0 or seen[k] >= len(pool):
                takes.append([])
                continue
            want = 2 * need if not seen[k] else need / max(len(kept[k]) / seen[k], 0.05) * 1.25
            takes.append(pool[seen[k]: seen[k] + max(1, math.ceil(want))])
        if not any(takes):
            return (*kept, seen)
        classes = classify([it for take in takes for it in take])
        at = 0
        for k, take in enumerate(takes):
            for it, c in zip(take, classes[at: at + len(take)]):
                if keeps[k](c) and len(kept[k]) < n:
                    kept[k].append((it, c))
            at += len(take)
            seen[k] += len(take)


class Evaluator:
    def __init__(self, tokenizer, splits, base_model, device=None, max_probe_size: int = 200,
                 abstention_text: str = "I don't know", *, base_state: Optional[dict] = None,
                 batch_size: int = 32, mode: str = "decode", max_new_tokens: int = 24,
                 drift_max_new_tokens: int = 16, drift_cache_mb: int = 512, drift_top_k: int = 256,
                 shots: int = 4, seed: int = 0, progress: bool = False, sets: Optional[dict] = None,
                 shifts: Sequence[str] = (), shift_size: int = 48):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        t0 = time.time()
        self.tok = tokenizer
        self.fmt = PromptFormat(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.abstention_text = abstention_text
        self.batch_size = batch_size
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.last_details: dict = {}
        n = max_probe_size

        # Fixed few-shot exemplars per relation, from the training facts as trained (target shown).
        self.exemplars = FewShotExemplars(splits.train, shots, seed)

        # --- probes, filtered by the base model's closed-book answers
        known, unknown, seen = _first_qualifying(  # prompts built only for the candidates it classifies
            lambda exs: self.classify_items(base_model, [self._item(e) for e in exs], need_abstention=True),
            [list(splits.known_probe), list(splits.unknown_probe)],
            [lambda c: c == "correct", lambda c: c != "correct"], n)
        self.known = [self._item(e) for e, _ in known]
        self.unknown = [self._item(e) for e, _ in unknown]
        base_classes = (["correct"] * len(self.known), [c for _, c in unknown])
        self.new = [self._item(e) for e in list(splits.new_facts)[:n]]
        self.probe_notes = {
            "known_probe": f"{len(self.known)} of {seen[0]} held-out Known facts answered correctly "
                           f"by the reference model in the evaluation prompt",
            "unknown_probe": f"{len(self.unknown)} of {seen[1]} held-out Unknown facts not answered "
                             f"correctly by the reference model in the evaluation prompt",
        }

        # --- shift tests (shifts.py): the first shift_size known-probe facts and new facts, asked in shifted forms
        alt = FewShotExemplars(splits.train, 4, seed) if shots == 0 else None  # the format shift's few-shot
        self.shift_items: dict[str, dict[str, tuple[list[int], list[_Item]]]] = {}
        for shift in shifts:
            entry = {}
            for probe, items in (("known", self.known), ("new", self.new)):
                idx, its = [], []
                for i, it in enumerate(items):
                    ex = shifted(shift, it.ex, seed) if len(its) < shift_size else None
                    if ex is None:
                        continue
                    if shift == "format":
                        ex_shots = alt.for_example(ex) if alt is not None else []
                    else:
                        ex_shots = self.shots_for(it.ex)
                    idx.append(i)
                    its.append(_Item(ex=ex, prompt=self.fmt.prompt_ids(ex, ex_shots)))
                entry[probe] = (idx, its)
            self.shift_items[shift] = entry
        self.last_shifts: dict = {}
        self.decoding = {
            "strategy": "greedy (argmax), the same for every model evaluated",
            "max_new_tokens": max_new_tokens, "stop_token_ids": sorted(self.fmt.stop_ids),
            "prompt": f"the model's chat template, {shots} exemplar turn(s) of the question's relation"
                      + (" (zero-shot)" if shots == 0 else ""),
            "answer_match": "normalised exact match against the accepted answers (prompts.normalize_answer)",
            "shifts": list(shifts), "shift_probe_size": shift_size, "shift_seed": seed,
        }

        # --- the job's own evaluation sets (spec.evaluation.sets), asked like the probes, scored on their own
        self.sets = {name: [self._item(e) for e in exs] for name, exs in (sets or {}).items()}
        self.last_sets: dict = {}

        # --- new facts' training targets, for eval_loss
        self._new_targets = [self.fmt.answer_ids(it.ex.target) + self.fmt.end_ids[:1] for it in self.new]

        # --- drift: prompts, base continuations and base log-probs
        dp = list(splits.drift_prompts)[:n]
        if getattr(splits, "drift_are_questions", True):
            self._drift_prompts = [self.fmt.prompt_ids(QAExample(id=f"drift-{i}", question=q, answers=["-"]))
                                   for i, q in enumerate(dp)]
        else:
            self._drift_prompts = [self.fmt.text_prompt_ids(p) for p in dp]
        self._drift_conts: list[list[int]] = []
        self._drift_base: list = []
        self.drift_exact = True
        if self._drift_prompts:
            outs = decode(base_model, self._drift_prompts, self.pad_id, self.fmt.stop_ids,
                          max_new_tokens=drift_max_new_tokens, batch_size=batch_size)
            self._drift_conts = [o[0] if o[0] else [self.fmt.end_ids[0]] for o in outs]
            vocab = base_model.get_output_embeddings().weight.shape[0]
            positions = sum(len(c) for c in self._drift_conts)
            self.drift_exact = positions * vocab * 4 <= drift_cache_mb * 2**20
            self._drift_top_k = drift_top_k
            store: list = [None] * len(self._drift_prompts)

            def keep(i, logits):
                lp = torch.log_softmax(logits, -1)
                if self.drift_exact:
                    store[i] = lp.cpu()
                else:
                    v, idx = lp.topk(drift_top_k, dim=-1)
                    rest = torch.log1p(-v.exp().sum(-1).clamp(max=1 - 1e-7))
                    store[i] = (v.cpu(), idx.cpu(), rest.cpu())

            teacher_forced(base_model, self._drift_prompts, self._drift_conts, self.pad_id, batch_size, keep)
            self._drift_base = store

        # --- parameter drift reference
        if base_state is None:
            base_state = {_strip_prefix(k): p.detach().float().cpu().clone()
                          for k, p in base_model.named_parameters()}
        self._theta0 = base_state
        self._theta0_norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in base_state.values()))

        self.setup_seconds = time.time() - t0
        self.base_figures = self.evaluate(base_model, _classes=base_classes)  # probes already classified
        self.base_details = dict(self.last_details)
        log.info("evaluator ready in %.1fs: %d known, %d unknown, %d new facts, %d drift prompts",
                 time.time() - t0, len(self.known), len(self.unknown), len(self.new), len(self._drift_prompts))

    # ----------------------------------------------------------------------------------- helpers
    def shots_for(self, ex: QAExample) -> list[QAExample]:
        """The evaluation prompt's exemplars for ``ex``: the relation's fixed exemplars, never ex itself."""
        return self.exemplars.for_example(ex)

    def _item(self, ex: QAExample) -> _Item:
        return _Item(ex=ex, prompt=self.fmt.prompt_ids(ex, self.shots_for(ex)))

    def classify_items(self, model, items: Sequence[_Item], need_abstention, mode: Optional[str] = None,
                       stats: Optional[dict] = None, loss_rows: Sequence[tuple] = ()) -> list[str]:
        """'correct' | 'abstain' | 'wrong' per item (see the module docstring for the modes).

        ``need_abstention``: a bool, or one per item (False: only correctness matters, abstentions count
        as wrong). Items are decoded in batches, a relation's exemplar prefix computed once per batch.
        ``loss_rows`` ((prompt ids, target ids), ...) go through one teacher-forced pass; their summed
        cross-entropy and token count land in ``stats['loss_sum']`` and ``stats['loss_tokens']``."""
        mode = mode or self.mode
        stats = stats if stats is not None else {}
        need = list(need_abstention) if isinstance(need_abstention, (list, tuple)) else \
            [bool(need_abstention)] * len(items)
        loss = [0.0, 0]
        if loss_rows:
            def consume(r, logits):
                tgt = torch.tensor(loss_rows[r][1], device=logits.device)
                loss[0] += float(torch.nn.functional.cross_entropy(logits, tgt, reduction="sum"))
                loss[1] += len(loss_rows[r][1])

            teacher_forced(model, [p for p, _ in loss_rows], [c for _, c in loss_rows], self.pad_id,
                           self.batch_size, consume)
        stats["loss_sum"], stats["loss_tokens"] = loss

        def alive(i, toks):
            """Stops a row once its text can be neither correct nor (where it counts) an abstention: it is
            wrong whatever follows (not in "generate", the reference)."""
            return mode == "generate" or self._still_open(self.tok.decode(toks), items[i].ex, need[i])

        result = []
        if items:
            outs = decode(model, [it.prompt for it in items], self.pad_id, self.fmt.stop_ids,
                          max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, alive=alive)
            for it, must_abstain, o in zip(items, need, outs):
                c = classify(self.fmt.decode_answer(o[0]), it.ex.answers, self.abstention_text)
                result.append("wrong" if c == "abstain" and not must_abstain else c)
        return result

    def _still_open(self, text: str, ex: QAExample, abstention: bool) -> bool:
        """Can an answer that starts with ``text`` still be correct or (when ``abstention`` counts) an
        abstention? False means it is wrong whatever follows."""
        return could_become(text, ex.answers) or (abstention and could_abstain(text, self.abstention_text))

    # ----------------------------------------------------------------------------------- figures
    def drift_kl(self, model) -> Optional[float]:
        if not self._drift_prompts:
            return None
        total = [0.0, 0]

        def consume(i, logits):
            lp = torch.log_softmax(logits, -1).cpu()
            base = self._drift_base[i]
            if self.drift_exact:
                kl = (base.exp() * (base - lp)).sum(-1)
            else:
                v, idx, rest_b = base
                lt = lp.gather(-1, idx)
                rest_t = torch.log1p(-lt.exp().sum(-1).clamp(max=1 - 1e-7))
                kl = (v.exp() * (v - lt)).sum(-1) + rest_b.exp() * (rest_b - rest_t)
            total[0] += float(kl.clamp(min=0).sum())
            total[1] += kl.numel()

        teacher_forced(model, self._drift_prompts, self._drift_conts, self.pad_id, self.batch_size, consume)
        return total[0] / max(1, total[1])

    def release_parameter_copy(self) -> None:
        """Free the CPU copy of the reference's parameters: a LoRA model's drift comes from its adapter's
        weight deltas (its base is frozen), and only the reference's norm is needed."""
        self._theta0 = {}

    def param_drift(self, model) -> float:
        """||theta - theta_0|| / ||theta_0||. Under ZeRO-3 each partitioned parameter is gathered in turn
        (collective: call it on every rank). A LoRA model: ||delta W|| of its adapters / ||theta_0||."""
        from .adapters import delta_sq_norm, is_adapted

        if is_adapted(model):
            return math.sqrt(delta_sq_norm(model)) / self._theta0_norm if self._theta0_norm > 0 else 0.0
        sq = 0.0
        with torch.no_grad():
            for name, p in model.named_parameters():
                ref = self._theta0.get(_strip_prefix(name))
                if ref is None:
                    continue
                if hasattr(p, "ds_id"):  # a ZeRO-3 partitioned parameter
                    import deepspeed

                    with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                        sq += float((p.detach().float().cpu() - ref).double().pow(2).sum())
                    continue
                sq += float((p.detach().float().cpu() - ref).double().pow(2).sum())
        return math.sqrt(sq) / self._theta0_norm if self._theta0_norm > 0 else 0.0

    def eval_loss(self, model) -> Optional[float]:
        if not self.new:
            return None
        total = [0.0, 0]

        def consume(i, logits):
            tgt = torch.tensor(self._new_targets[i], device=logits.device)
            total[0] += float(torch.nn.functional.cross_entropy(logits, tgt, reduction="sum"))
            total[1] += len(self._new_targets[i])

        teacher_forced(model, [it.prompt for it in self.new], self._new_targets, self.pad_id, self.batch_size,
                       consume)
        return total[0] / total[1]

    def evaluate(self, model, mode: Optional[str] = None, *, _classes=None) -> dict:
        """The figures of ``model`` (keys: contract.FIGURES; None where a probe set is empty)."""
        t0 = time.time()
        stats: dict = {}
        loss_rows = [(it.prompt, t) for it, t in zip(self.new, self._new_targets)]
        with eval_mode(model):
            extra = [it for items in self.sets.values() for it in items]
            shifted_items = [it for entry in self.shift_items.values() for _, its in entry.values() for it in its]
            tail = extra + shifted_items  # sets count abstentions; shifted questions only correctness
            tail_need = [True] * len(extra) + [False] * len(shifted_items)
            if _classes is not None:
                kc, uc = _classes
                cls = self.classify_items(model, self.new + tail, [False] * len(self.new) + tail_need,
                                          mode, stats, loss_rows)
                nc, rest = cls[:len(self.new)], cls[len(self.new):]
            else:  # one pass over all probes (shared relation prefixes computed once)
                items = self.known + self.unknown + self.new + tail
                k, u, n = len(self.known), len(self.unknown), len(self.new)
                need = [True] * (k + u) + [False] * n + tail_need
                cls = self.classify_items(model, items, need, mode, stats, loss_rows)
                kc, uc, nc, rest = cls[:k], cls[k:k + u], cls[k + u:k + u + n], cls[k + u + n:]
            sc, hc = rest[:len(extra)], rest[len(extra):]
            drift = self.drift_kl(model)
            loss = stats["loss_sum"] / stats["loss_tokens"] if stats.get("loss_tokens") else None
        pdrift = self.param_drift(model)

        def rate(cs, what):
            return (sum(c == what for c in cs) / len(cs)) if cs else None

        figures = {
            "known_accuracy": rate(kc, "correct"),
            "hallucination_rate": rate(kc, "wrong"),
            "new_fact_accuracy": rate(nc, "correct"),
            "abstention_rate": rate(uc, "abstain"),
            "fabrication_rate": rate(uc, "wrong"),
            "drift_kl": drift,
            "param_drift_l2": pdrift,
            "eval_loss": loss,
        }
        assert tuple(figures) == contract.FIGURES
        self.last_sets, at = {}, 0
        for name, items in self.sets.items():
            cs, at = sc[at:at + len(items)], at + len(items)
            self.last_sets[name] = {"accuracy": rate(cs, "correct"), "abstention_rate": rate(cs, "abstain"),
                                    "wrong_rate": rate(cs, "wrong"), "size": len(cs)}
        self.last_shifts, at = {}, 0
        for shift, entry in self.shift_items.items():
            out = {}
            for probe, trained in (("known", kc), ("new", nc)):
                idx, its = entry[probe]
                cs, at = hc[at:at + len(its)], at + len(its)
                acc = rate(cs, "correct")
                same = rate([trained[i] for i in idx], "correct")
                out[probe] = {"accuracy": acc, "unshifted_accuracy": same, "gap": gap(same, acc), "size": len(cs)}
            self.last_shifts[shift] = out
        self.last_details = {
            "seconds": round(time.time() - t0, 3),
            "mode": mode or self.mode,
            "sizes": {"known_probe": len(self.known), "unknown_probe": len(self.unknown),
                      "new_facts": len(self.new), "drift_prompts": len(self._drift_prompts)},
            "known": {k: sum(c == k for c in kc) for k in ("correct", "abstain", "wrong")},
            "unknown": {k: sum(c == k for c in uc) for k in ("correct", "abstain", "wrong")},
            "new": {k: sum(c == k for c in nc) for k in ("correct", "wrong")},
            "drift_kl_exact": self.drift_exact,
        }
        return figures
