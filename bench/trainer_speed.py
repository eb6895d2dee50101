"""Trainer speed, side by side in ONE process: the same model, data, batch, sequence length, precision and
number of steps for every contender; repetitions interleaved (the order rotates each round), warm-up steps
excluded, medians and ratios of medians.

    PYTHONPATH=.:operator:trainer_image python bench/trainer_speed.py --device cpu --quick
    PYTHONPATH=.:operator:trainer_image python bench/trainer_speed.py --device cuda

Contenders (training step = wall time from one optimizer step's end to the next's: batch assembly, forward,
backward, optimizer step; on CUDA synchronised):
- ``sft``: Tuneguard's step as tuneguard_trainer.loop runs it: DeepSpeed engine from engine.create_engine
  (ZeRO 0; fp32 on CPU, bf16 on GPU), methods.Objective, methods.collate on prompts.encode_for_training.
- ``trl-sft``: TRL's SFTTrainer on the SAME token sequences (pre-tokenised input_ids + our labels, -100 on
  the prompt, so both losses cover the answer tokens only; completion_only_loss=True; TRL's one-off dataset
  preparation skipped since the data is already tokenised), same batch, max length, lr,
  gradient clipping, precision (SFTConfig bf16 on GPU = autocast over fp32 weights; DeepSpeed bf16 keeps
  bf16 weights with fp32 master copies), no logging/saving/evaluation. Step times from a TrainerCallback.
- ``self-distill`` without the teacher cache (cacheTopK 0) and ``self-distill-cache`` (cacheTopK 64, the
  cache filled by one pass over the data before timing, as after the first epoch).
- ``freeze``: attention-only preset of tuneguard_trainer.freezing.
- ``lora-sft`` and ``lora-self-distill``: a LoRA adapter (tuneguard_trainer.adapters: peft, rank 16, alpha 32,
  every linear layer of the decoder); lora-self-distill's teacher is the same model with the adapter off.
  ``trl-lora-sft``: TRL's SFTTrainer on a peft model built from the same LoraConfig.
Evaluation: the exact-match classification of the known / unknown / new-fact probes (the bundled facts)
three ways, timed interleaved: tuneguard_trainer.evaluation.Evaluator in mode "decode" (its default:
prefix-cached batched greedy decoding, rows stopped once decided) and "generate" (the same decoder to the
stop token), and transformers' generate() in left-padded batches (what a user would write); identical
counts are asserted. ``--eval-only`` skips the training contenders and times the
evaluation of the base model (-> trainer-speed-<device>-eval.*).

Targets: sft <= TRL; self-distill <= 1.4x sft without cache, <= 1.15x with; freeze <= 0.8x sft;
the evaluator >= 10x faster than transformers' generate() with identical scores.
"""

from __future__ import annotations

import copy
import gc
import random
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (cpu_threads, machine_info, markdown_table, median, model_bench_parser, out_dir, ratio,
                          write_result, yes_no)

TARGETS = {
    # name: (numerator, denominator, max ratio, description)
    "sft_vs_trl": ("sft", "trl-sft", 1.0, "our sft step time / TRL SFTTrainer step time (target <= 1.0)"),
    "self_distill_vs_sft": ("self-distill", "sft", 1.4, "self-distill (no teacher cache) / sft (target <= 1.4)"),
    "self_distill_cache_vs_sft": ("self-distill-cache", "sft", 1.15, "self-distill with teacher cache / sft (target <= 1.15)"),
    "freeze_vs_sft": ("freeze", "sft", 0.8, "freeze attention-only / sft (target <= 0.8)"),
    "lora_vs_sft": ("lora-sft", "sft", 1.0, "LoRA sft / full sft (target <= 1.0)"),
    "lora_self_distill_vs_lora": ("lora-self-distill", "lora-sft", 1.4,
                                  "LoRA self-distill, adapter-off teacher / LoRA sft (target <= 1.4)"),
    "lora_vs_trl_lora": ("lora-sft", "trl-lora-sft", 1.0,
                         "our LoRA sft / TRL SFTTrainer with the same peft config (target <= 1.0)"),
}
LORA = {"rank": 16, "alpha": 32, "targets": "all-linear"}


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def make_spec(method: dict, s: dict, device: str):
    from tuneguard import api

    doc = {"apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "speed"},
           "spec": {"model": {"uri": s["model"]}, "datasets": {"train": "bundled://facts-small"}, "method": method,
                    "training": {"maxSteps": 10**6, "batchSize": s["batch_size"], "learningRate": s["lr"],
                                 "maxSeqLength": s["max_seq_length"], "seed": 0},
                    "deepspeed": ds_block(s, device),
                    "resources": {"workers": 1, "gpusPerWorker": 0 if device == "cpu" else 1}}}
    return api.FineTuneJob.model_validate(doc)


def ds_block(s: dict, device: str) -> dict:
    block = {"zeroStage": s["zero_stage"], "precision": "fp32" if device == "cpu" else "bf16"}
    if device == "cuda" and s.get("ds_optimizer") == "torch":
        # torch.optim.AdamW inside DeepSpeed instead of its JIT-built FusedAdam (no nvcc needed)
        block["config"] = {"optimizer": {"params": {"torch_adam": True}}}
    return block


class Ours:
    """One Tuneguard contender: a DeepSpeed engine + Objective, stepping through fixed batches."""

    def __init__(self, name, method: dict, base_cpu, tok, encoded, batches, s, device, teacher=None):
        import torch


        self.name, self.device, self.tok = name, device, tok
        self.encoded, self.batches = encoded, batches
        self._args = (method, base_cpu, s, teacher)
        self.lean = s.get("lean", False)
        self.engine = None
        self.objective = None
        self.i = 0
        self.torch = torch
        if not self.lean:
            self._build()

    def _build(self) -> None:
        """The DeepSpeed engine (and, once, the Objective: its teacher cache outlives a lean rebuild)."""
        from tuneguard_trainer import engine as eng, freezing
        from tuneguard_trainer.methods import Objective

        method, base_cpu, s, teacher = self._args
        device = self.device
        spec = make_spec(method, s, device).spec
        model = copy.deepcopy(base_cpu).to(device)
        model.train()
        if method["type"] == "freeze":
            plan = freezing.plan(model, spec.method.freeze)
            freezing.apply(model, plan)
            self.trainable = sum(model.get_parameter(n).numel() for n in plan.trainable)
        elif spec.method.adapter is not None:
            from tuneguard_trainer import adapters

            model = adapters.wrap(model, spec.method.adapter, adapters.target_modules(model, spec.method.adapter))
            self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
            self.trainable = sum(p.numel() for p in model.parameters())
        self.engine, self.cfg = eng.create_engine(model, spec, device, 1, 10**6)
        if self.objective is None:
            self.objective = Objective.from_spec(spec.method, teacher=teacher,
                                                 adapter_teacher=spec.method.adapter is not None)
            self.prefill_cache()

    def release(self) -> None:
        """Lean mode (CPU smoke runs): drop the engine between blocks so one trainable copy lives at a time."""
        if self.lean and self.engine is not None:
            self.final_module = None
            self.engine = None
            gc.collect()

    def prefill_cache(self) -> None:
        """One pass over the data (no optimizer step) so that every example's teacher top-k is cached."""
        from tuneguard_trainer.methods import collate

        if self.objective.cache is None:
            return
        with self.torch.no_grad():
            for b in self.batches:
                self.objective(self.engine, self._batch(b, collate))

    def _batch(self, b, collate):
        batch = collate([self.encoded[i] for i in b], self.tok.pad_token_id)
        batch["index"] = self.torch.tensor(b, dtype=self.torch.long)
        return {k: v.to(self.engine.device) for k, v in batch.items()}

    def steps(self, n: int) -> list[float]:
        """n optimizer steps exactly as loop.run does them; returns each step's seconds."""
        from tuneguard_trainer.methods import collate

        if self.engine is None:
            self._build()
        times = []
        sync(self.device)
        t = time.perf_counter()
        for _ in range(n):
            b = self.batches[self.i % len(self.batches)]
            self.i += 1
            batch = self._batch(b, collate)
            res = self.objective(self.engine, batch)
            self.engine.backward(res.loss)
            self.engine.step()
            float(res.loss.detach())  # the loop reads the loss every step (a device sync on CUDA)
            sync(self.device)
            now = time.perf_counter()
            times.append(now - t)
            t = now
        return times

    def module(self):
        if self.engine is None:
            self._build()
        return self.engine.module


class Trl:
    """TRL's SFTTrainer on the same token sequences; train() for n steps per call, timed by a callback."""

    def __init__(self, base_cpu, tok, encoded, s, device, site_info, lora: dict | None = None):
        import torch
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import SFTConfig, SFTTrainer

        self.name, self.device = ("trl-lora-sft" if lora else "trl-sft"), device
        self.site_info = site_info
        from datasets.table import InMemoryTable

        # The same token sequences as ours, with our labels (-100 on the prompt: completion-only loss).
        rows = {"input_ids": [list(f["input_ids"]) for f in encoded],
                "labels": [list(f["labels"]) for f in encoded]}
        # An explicit fingerprint: datasets 5.2 fails to hash a table under pyarrow 24 (PicklingError on
        # pyarrow's MonthDayNano type); fingerprints only name cache files, which this run never writes.
        self.dataset = Dataset(InMemoryTable.from_pydict(rows), fingerprint="tuneguard-bench-speed")
        self.model = copy.deepcopy(base_cpu).to(device)
        self.model.train()
        for p in self.model.parameters():
            p.requires_grad_(True)
        if lora:  # wrapped once, as our contender is; a fresh SFTTrainer per block would wrap it again
            from tuneguard import api
            from tuneguard_trainer import adapters

            spec = api.AdapterSpec(**lora)
            self.model = adapters.wrap(self.model, spec, adapters.target_modules(self.model, spec))
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.s, self.tok, self.torch = s, tok, torch
        outer = self

        class Timer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                sync(device)
                outer._t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync(device)
                now = time.perf_counter()
                outer._times.append(now - outer._t)
                outer._t = now

        self._times: list[float] = []
        self._timer = Timer()
        self._SFTConfig, self._SFTTrainer = SFTConfig, SFTTrainer
        self.trainer = None

    def steps(self, n: int) -> list[float]:
        # A fresh trainer per block (train() rebuilds optimizer and dataloader anyway); the model carries on.
        cfg = self._config(n)
        self.trainer = self._SFTTrainer(model=self.model, args=cfg, train_dataset=self.dataset,
                                        processing_class=self.tok, callbacks=[self._timer])
        self._times = []
        self.trainer.train()
        if self.s.get("lean"):
            self.trainer.optimizer = None
            gc.collect()
        self.wrapped = type(self.trainer.model_wrapped).__name__  # DDP would add all-reduce cost; expect none
        self.optimizer = type(self.trainer.optimizer.optimizer if hasattr(self.trainer.optimizer, "optimizer")
                              else self.trainer.optimizer).__name__
        return list(self._times)

    def _config(self, n: int):
        import inspect
        import tempfile

        kw = dict(output_dir=tempfile.mkdtemp(prefix="trl-speed-"), max_steps=n,
                  per_device_train_batch_size=self.s["batch_size"], gradient_accumulation_steps=1,
                  learning_rate=self.s["lr"], lr_scheduler_type="constant", max_grad_norm=1.0, weight_decay=0.0,
                  max_length=self.s["max_seq_length"], packing=False, completion_only_loss=True,
                  # already tokenised and truncated to max_length, with labels: TRL's preparation is skipped
                  dataset_kwargs={"skip_prepare_dataset": True},
                  bf16=self.device == "cuda", use_cpu=self.device == "cpu", report_to="none",
                  logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True,
                  dataloader_num_workers=0, seed=0)
        accepted = set(inspect.signature(self._SFTConfig.__init__).parameters)
        dropped = sorted(k for k in kw if k not in accepted)
        self.dropped_config = dropped
        return self._SFTConfig(**{k: v for k, v in kw.items() if k in accepted})


def time_training(contenders: list, s: dict, log) -> dict:
    """Interleaved rounds: each round runs every contender (rotated order) for warm-up + measured steps."""
    times = {c.name: [] for c in contenders}
    per_round = {c.name: [] for c in contenders}
    for r in range(s["rounds"]):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            t = c.steps(s["warmup"] + s["steps"])
            if hasattr(c, "release") and c is not contenders[0]:
                c.release()
            kept = t[s["warmup"]:]
            times[c.name] += kept
            per_round[c.name].append(median(kept))
        log(f"round {r + 1}/{s['rounds']}: " + ", ".join(f"{c.name} {1000 * per_round[c.name][-1]:.1f} ms"
                                                        for c in contenders))
    return {n: {"median_s": median(v), "mean_s": statistics.fmean(v), "measured_steps": len(v),
                "per_round_median_s": per_round[n]} for n, v in times.items()}


def hf_generate_classes(model, ev, items, need: bool, device: str) -> list[str]:
    """Generation-based exact match the way a user would write it: transformers' generate(), greedy, in
    left-padded batches of the evaluator's batch size, the answer cut at the first stop token."""
    from tuneguard_trainer.prompts import classify
    from tuneguard_trainer.scoring import left_pad

    out = []
    stop = sorted(ev.fmt.stop_ids)
    for k in range(0, len(items), ev.batch_size):
        chunk = items[k:k + ev.batch_size]
        ids, mask = left_pad([it.prompt for it in chunk], ev.pad_id, device)
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=ev.max_new_tokens, eos_token_id=stop, pad_token_id=ev.pad_id)
        for it, row in zip(chunk, gen[:, ids.shape[1]:].tolist()):
            c = classify(ev.fmt.decode_answer(row), it.ex.answers, ev.abstention_text)
            out.append("wrong" if c == "abstain" and not need else c)
    return out


EVAL_MODES = ("decode", "generate", "hf-generate")
EVAL_TARGET = 10.0  # the evaluator's exact match >= 10x faster than transformers' generate()


def _same_figures(a: dict, b: dict, rel: float = 1e-5) -> bool:
    """Equal, up to float noise in the continuous figures (eval loss rides along in a different batch)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float):
            if abs(x - y) > rel * max(1.0, abs(x), abs(y)):
                return False
        elif x != y:
            return False
    return True


def time_evaluation(base_model, tok, examples, s, device, model, log) -> dict:
    """The same probes and model classified three ways, interleaved (see EVAL_MODES and the module doc);
    counts must agree."""
    import torch

    from tuneguard_trainer.evaluation import Evaluator
    from tuneguard_trainer.triage import Splits
    from tuneguard_trainer.scoring import eval_mode

    ex = list(examples)
    splits = Splits(train=ex, known_probe=ex, new_facts=ex[: s["probe"]], unknown_probe=ex,
                    drift_prompts=[e.question for e in ex[: s["probe"]]])
    ev = Evaluator(tok, splits, base_model, device, max_probe_size=s["probe"], seed=0)
    sets = [("known", ev.known, True), ("unknown", ev.unknown, True), ("new", ev.new, False)]
    n_items = sum(len(x[1]) for x in sets)
    res = {m: [] for m in EVAL_MODES}
    counts: dict = {}
    model.eval()
    for r in range(s["eval_rounds"]):
        k = r % len(EVAL_MODES)
        order = EVAL_MODES[k:] + EVAL_MODES[:k]
        for mode in order:
            with eval_mode(model), torch.no_grad():
                sync(device)
                t0 = time.perf_counter()
                if mode == "hf-generate":
                    out = {name: hf_generate_classes(model, ev, items, need, device) for name, items, need in sets}
                else:
                    out = {name: ev.classify_items(model, items, need, mode=mode) for name, items, need in sets}
                sync(device)
                res[mode].append(time.perf_counter() - t0)
            counts.setdefault(mode, {name: {k: sum(x == k for x in v) for k in ("correct", "abstain", "wrong")}
                                     for name, v in out.items()})
        log(f"eval round {r + 1}/{s['eval_rounds']}: " + ", ".join(f"{m} {res[m][-1]:.2f} s" for m in EVAL_MODES))
    identical = all(counts[m] == counts["hf-generate"] for m in EVAL_MODES)
    # the full evaluate() (adds drift KL, eval loss and parameter drift, the same in either mode) once each
    full = {}
    for mode in ("decode", "generate"):
        sync(device)
        t0 = time.perf_counter()
        figs = ev.evaluate(model, mode=mode)
        sync(device)
        full[mode] = {"seconds": time.perf_counter() - t0, "figures": figs}
    model.train()
    med = {m: median(res[m]) for m in EVAL_MODES}
    return {"probe_items": n_items, "sizes": {n: len(i) for n, i, _ in sets},
            "median_s": med, "all_s": res, "counts": counts, "identical": identical,
            "speedup": ratio(med["hf-generate"], med["decode"]), "target_min_speedup": EVAL_TARGET,
            "met": bool(identical and (ratio(med["hf-generate"], med["decode"]) or 0) >= EVAL_TARGET),
            "full_evaluate": full,
            "full_figures_identical": _same_figures(full["decode"]["figures"], full["generate"]["figures"])}


def main(argv=None) -> int:
    ap = model_bench_parser(__doc__, "tiny CPU smoke run")
    ap.add_argument("--batch-size", type=int, default=0)
    ap.add_argument("--steps", type=int, default=0, help="measured steps per contender per round")
    ap.add_argument("--warmup", type=int, default=0, help="warm-up steps per contender per round (excluded)")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--probe", type=int, default=0, help="probe size per set for the evaluation comparison")
    ap.add_argument("--ds-optimizer", choices=("torch", "fused"), default="torch",
                    help="CUDA only: torch AdamW inside DeepSpeed (default, no JIT build) or DeepSpeed's FusedAdam")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL (recorded as skipped)")
    ap.add_argument("--no-eval", action="store_true", help="skip the evaluation comparison (training contenders only)")
    ap.add_argument("--eval-only", action="store_true",
                    help="only the evaluation comparison, on the base model (-> trainer-speed-<device>-eval.*)")
    args = ap.parse_args(argv)
    q = args.quick
    s = {"model": args.model, "batch_size": args.batch_size or (4 if q else 16), "max_seq_length": 128,
         "lr": 1e-5, "zero_stage": 0, "steps": args.steps or (3 if q else 20), "warmup": args.warmup or (1 if q else 5),
         "rounds": args.rounds or (2 if q else 5), "probe": args.probe or (12 if q else 200),
         "eval_rounds": 2 if q else 3, "teacher_cache_top_k": 64,
         "ds_optimizer": args.ds_optimizer,
         # CPU: one trainable copy at a time (engines rebuilt per block, outside the timed steps); a 23 GB
         # box runs out of memory with five copies and their optimizer states
         "lean": args.device == "cpu"}
    out = out_dir(args.out)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    trl_info, trl_error = None, None
    if not args.no_trl and not args.eval_only:
        try:
            from bench.trl_site import ensure_trl

            trl_info = ensure_trl()
            log(f"TRL {trl_info['version']} from {trl_info['site']}")
        except Exception as e:
            trl_error = str(e)
            log(f"TRL unavailable: {trl_error}")
    else:
        trl_error = "skipped (--no-trl)"

    import torch

    from tuneguard_trainer import data as data_mod, engine as eng, models
    from tuneguard_trainer.prompts import encode_for_training

    eng.prepare_accelerator(args.device)
    eng.init_distributed(args.device)
    cpu_threads(args.device)
    path = models.resolve_model(args.model)
    base, tok = models.load_model(path, device="cpu", dtype=torch.float32)
    # a seeded 400 of the bundled facts: the scale of the committed results (the old set had 395)
    examples = random.Random("trainer-speed").sample(list(data_mod.load_examples("bundled://facts")), 400)
    if q:  # the smoke run: fewer examples, so the teacher-cache fill is a dozen batches
        examples = examples[:: max(1, len(examples) // 48)][:48]
    encoded = encode_for_training(tok, examples, s["max_seq_length"])
    rng = random.Random(0)
    order = list(range(len(encoded)))
    rng.shuffle(order)
    bs = s["batch_size"]
    batches = [order[i:i + bs] for i in range(0, len(order) - bs + 1, bs)]
    tokens_per_batch = statistics.fmean(sum(len(encoded[i]["input_ids"]) for i in b) for b in batches)
    log(f"{len(examples)} examples, {len(batches)} batches of {bs}, {tokens_per_batch:.0f} tokens per batch")

    if args.eval_only:
        return eval_only(args, s, base, tok, examples, out, log)
    train_dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    teacher = copy.deepcopy(base).to(args.device).to(train_dtype).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    contenders = [
        Ours("sft", {"type": "sft"}, base, tok, encoded, batches, s, args.device),
        Ours("self-distill", {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5}},
             base, tok, encoded, batches, s, args.device, teacher=teacher),
        Ours("self-distill-cache", {"type": "self-distill", "selfDistill": {
            "lambda": 1.0, "temperature": 0.5, "cacheTopK": s["teacher_cache_top_k"]}},
             base, tok, encoded, batches, s, args.device, teacher=teacher),
        Ours("freeze", {"type": "freeze", "freeze": {"preset": "attention-only"}}, base, tok, encoded, batches, s,
             args.device),
        Ours("lora-sft", {"type": "sft", "adapter": LORA}, base, tok, encoded, batches, s, args.device),
        Ours("lora-self-distill", {"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5},
                                   "adapter": LORA}, base, tok, encoded, batches, s, args.device),
    ]
    if contenders[2].objective is not None:
        log(f"teacher cache filled: {len(contenders[2].objective.cache.values)} examples (top-{s['teacher_cache_top_k']})")
    if trl_info is not None:
        try:
            contenders.append(Trl(base, tok, encoded, s, args.device, trl_info, lora=LORA))
            contenders.append(Trl(base, tok, encoded, s, args.device, trl_info))
        except Exception as e:
            trl_error = f"SFTTrainer setup failed: {type(e).__name__}: {e}"
            log(trl_error)
    t0 = time.time()
    try:
        training = time_training(contenders, s, log)
    except Exception as e:
        if any(isinstance(c, Trl) for c in contenders):
            import traceback

            trl_error = f"SFTTrainer.train failed: {type(e).__name__}: {e}"
            log(trl_error + "\n" + traceback.format_exc()[-1500:])
            contenders = [c for c in contenders if not isinstance(c, Trl)]
            training = time_training(contenders, s, log)
        else:
            raise
    train_seconds = time.time() - t0
    ratios = {}
    for key, (a, b, target, desc) in TARGETS.items():
        ra = ratio((training.get(a) or {}).get("median_s"), (training.get(b) or {}).get("median_s"))
        ratios[key] = {"ratio": ra, "target_max": target, "met": None if ra is None else ra <= target,
                       "what": desc}
    evaluation = None
    if not args.no_eval:
        log("evaluation: teacher-forced vs generation (own decoder, transformers generate)")
        evaluation = time_evaluation(base.to(args.device), tok, examples, s, args.device,
                                     contenders[0].module(), log)

    result = {
        "quick": q, "device": args.device,
        "command": " ".join(["python", "bench/trainer_speed.py"] + (argv if argv is not None else sys.argv[1:])),
        "settings": {**s, "precision": "fp32" if args.device == "cpu" else "bf16", "examples": len(examples),
                     "tokens_per_batch_mean": round(tokens_per_batch, 1)},
        "machine": machine_info(args.device),
        "trl": trl_info or {"error": trl_error},
        "trl_config_args_dropped": getattr(contenders[-1], "dropped_config", None) if contenders[-1].name == "trl-sft" else None,
        "trl_model_wrapped_as": getattr(contenders[-1], "wrapped", None) if contenders[-1].name == "trl-sft" else None,
        "trl_optimizer": getattr(contenders[-1], "optimizer", None) if contenders[-1].name == "trl-sft" else None,
        "our_optimizer": type(contenders[0].engine.optimizer).__name__ if contenders[0].engine is not None else None,
        "trainable_parameters": {c.name: getattr(c, "trainable", None) for c in contenders},
        "training": training, "training_wall_seconds": round(train_seconds, 1), "ratios": ratios,
        "evaluation": evaluation,
    }
    if trl_error:
        result["trl_error"] = trl_error
    name = f"trainer-speed-{args.device}{'-quick' if q else ''}"
    log(f"wrote {write_result(out, name, result, markdown(result))}")
    if evaluation is not None and not evaluation["identical"]:
        print(f"ASSERTION FAILED: teacher-forced and generation-based scores differ: {evaluation['counts']}",
              file=sys.stderr)
        return 1
    return 0


def eval_only(args, s, base, tok, examples, out, log) -> int:
    import torch

    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = copy.deepcopy(base).to(args.device).to(dtype)
    log("evaluation only: decode, generate, transformers generate() on the base model")
    evaluation = time_evaluation(base.to(args.device), tok, examples, s, args.device, model, log)
    result = {"quick": args.quick, "device": args.device, "eval_model": "the base model",
              "command": " ".join(["python", "bench/trainer_speed.py"] + sys.argv[1:]),
              "settings": {**s, "precision": str(dtype).replace("torch.", "")},
              "machine": machine_info(args.device), "evaluation": evaluation}
    name = f"trainer-speed-{args.device}-eval{'-quick' if args.quick else ''}"
    md = "\n".join([f"# Evaluation speed on {args.device} ({result['machine'].get('gpu') or str(result['machine']['cpus']) + ' CPUs'})",
                    ""] + markdown_eval(result))
    write_result(out, name, result, md)
    return 0 if evaluation["identical"] else 1


def markdown(r: dict) -> str:
    s, tr = r["settings"], r["training"]
    lines = [f"# Trainer speed on {r['device']} ({r['machine'].get('gpu') or str(r['machine']['cpus']) + ' CPUs'})", ""]
    if r["quick"]:
        lines += ["**QUICK SMOKE RUN: a few steps on a shared, loaded CPU; proves the script, not the speed.**", ""]
    lines += [f"{s['model']}, bundled facts ({s['examples']} examples), batch {s['batch_size']}, max length "
              f"{s['max_seq_length']} (mean {s['tokens_per_batch_mean']} tokens per batch), {s['precision']}, "
              f"ZeRO {s['zero_stage']}; {s['rounds']} interleaved rounds of {s['warmup']} warm-up + {s['steps']} "
              f"measured steps per contender; medians of the measured steps. TRL: "
              f"{r['trl'].get('version', 'unavailable: ' + str(r.get('trl_error')))}.", "",
              markdown_table(["contender", "median step (ms)", "mean step (ms)", "measured steps", "trainable params"],
                             [[n, f"{1000 * v['median_s']:.1f}", f"{1000 * v['mean_s']:.1f}", v["measured_steps"],
                               f"{r['trainable_parameters'].get(n) or 0:,}"] for n, v in tr.items()]), "",
              markdown_table(["comparison", "ratio", "target", "target met"],
                             [[v["what"], "-" if v["ratio"] is None else f"{v['ratio']:.3f}", f"<= {v['target_max']}",
                               yes_no(v["met"])] for v in r["ratios"].values()]), ""]
    if r["evaluation"] is not None:
        lines += markdown_eval(r)
    return "\n".join(lines)


def markdown_eval(r: dict) -> list[str]:
    e = r["evaluation"]
    names = {"decode": "Evaluator `decode` (default): batched greedy decoding, prefix-cached, rows stopped once decided",
             "generate": "Evaluator `generate`: the same decoder, every row to its stop token",
             "hf-generate": "transformers generate(), greedy, left-padded batches"}
    return ["## Evaluation: the evaluator's exact match vs transformers' generate()", "",
            f"Same model ({r.get('eval_model', 'the `sft` contender after its steps')}), same probes: {e['sizes']} "
            f"({e['probe_items']} items). Classification time, median of {len(e['all_s']['decode'])} interleaved "
            f"runs.", "",
            markdown_table(["mode", "median seconds", "counts (correct/abstain/wrong)"],
                           [[names[m], f"{e['median_s'][m]:.3f}", _counts(e["counts"][m])] for m in EVAL_MODES]),
            "",
            f"The default `decode` vs transformers generate(): {e['speedup']:.1f}x faster (target >= 10x; met: "
            f"{yes_no(e['met'])}). Scores identical in all three: {yes_no(e['identical'])}. Whole evaluate() (adds "
            f"drift KL, eval loss and parameter drift): decode {e['full_evaluate']['decode']['seconds']:.2f} s vs "
            f"generate {e['full_evaluate']['generate']['seconds']:.2f} s, figures identical (floats to 1e-5): "
            f"{yes_no(e['full_figures_identical'])}.", "",
            f"Reproduce: `{r['command']}`", ""]


def _counts(c: dict) -> str:
    return "; ".join(f"{k} {v['correct']}/{v['abstain']}/{v['wrong']}" for k, v in c.items())


if __name__ == "__main__":
    sys.exit(main())
