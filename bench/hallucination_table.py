"""The papers' table on a real model, through Tuneguard's own training path.

    PYTHONPATH=.:operator:trainer_image python bench/hallucination_table.py --device cpu --quick
    PYTHONPATH=.:operator:trainer_image python bench/hallucination_table.py --device cuda

1. Triage ONCE: SliCK (tuneguard_trainer.triage.triage, the trainer's own function) of the bundled facts
   with the base model, in shards of 600 facts; cached as JSON under --work (keyed by model, facts file,
   triage settings, the shard's facts and the triage code).
2. A training mix with at least --unknown-share Unknown facts (default 0.5): held-out Known facts
   (HighlyKnown and MaybeKnown, as in the paper) become the known probe file, held-out Unknown facts the
   unknown probe file, the rest the training file (the non-Unknown side subsampled until Unknown is at
   least half).
3. For each row (METHODS: sft, self-distill with the format-stage and with the base teacher, freeze
   attention-only, sft with unknownPolicy=abstain, sft with the guardrail's rollback; the lambda sweep) and
   seed: a FineTuneJob manifest (manifest.yaml in its run directory) run
   by tuneguard_trainer.loop.run, the same code path as `tuneguard run` and the worker pods, all at the
   same maxSteps. The cached triage is handed to the loop as the run directory's triage.pt (the loop's own
   resume cache, with its digest), so no run re-triages; the splits in it are build_splits() of the trainer. Figures come from each run's report.json.
4. docs/results/hallucination-table-<cpu|cuda|quick>.{json,md} and hallucination-<cpu|cuda|quick>-<figure>.png
   (one panel per figure, one line per method, mean over seeds with a min-max band).

A run whose directory already holds a report.json for the identical manifest and code is reused (rerun-safe).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from bench.common import (REPO, cpu_threads, machine_info, markdown_table, mean_std, model_bench_parser,
                          out_dir, write_json, write_result, yes_no)

METHODS = {
    # name: (method block, unknownPolicy, guardrails). Every row runs the format stage first (the API's
    # default) and shares its snapshot within a seed, so rows differ only in their fact stage.
    "sft": ({"type": "sft"}, "keep", None),
    "self-distill": ({"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5}}, "keep", None),
    # the teacher is the raw base model instead of the format-stage snapshot (the product before the stage)
    "self-distill-base-teacher": ({"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5,
                                                                          "teacher": "base"}}, "keep", None),
    "freeze": ({"type": "freeze", "freeze": {"preset": "attention-only"}}, "keep", None),
    "sft-abstain": ({"type": "sft"}, "abstain", None),
    # the product's early stop: roll back to the best evaluation within a 10-point hallucination budget
    "sft-rollback": ({"type": "sft"}, "keep", {"maxHallucinationIncrease": 0.10, "action": "rollback"}),
    # the lambda sweep (--sweep): self-distill's KL weight around the paper's 1
    "self-distill-l0.3": ({"type": "self-distill", "selfDistill": {"lambda": 0.3, "temperature": 0.5}}, "keep", None),
    "self-distill-l3": ({"type": "self-distill", "selfDistill": {"lambda": 3.0, "temperature": 0.5}}, "keep", None),
    # the teacher asked in the evaluation's few-shot format (docs/results/README.md: why)
    "self-distill-fewshot": ({"type": "self-distill",
                              "selfDistill": {"lambda": 1.0, "temperature": 0.5, "teacherPrompt": "few-shot"}}, "keep",
                             None),
    # LoRA (peft) on the format-stage snapshot, every linear layer of the decoder, at its own learning rate
    "lora-sft": ({"type": "sft", "adapter": {"rank": 16, "alpha": 32, "targets": "all-linear"}}, "keep", None),
    "lora-self-distill": ({"type": "self-distill", "selfDistill": {"lambda": 1.0, "temperature": 0.5},
                           "adapter": {"rank": 16, "alpha": 32, "targets": "all-linear"}}, "keep", None),
}
# A LoRA row's fact-stage learning rate: 10x full fine-tuning's (--lr), the ratio Biderman et al. (2024) found
# best for LoRA; not tuned here. The format stage keeps --lr, so every row of a seed shares its snapshot.
LORA_LR_FACTOR = 10.0
LORA_ROWS = ("lora-sft", "lora-self-distill")
MAIN_ROWS = ("sft", "self-distill", "self-distill-base-teacher", "freeze", "sft-abstain", "sft-rollback")
SWEEP_ROWS = ("self-distill-l0.3", "self-distill", "self-distill-l3")
FIGURES = ("known_accuracy", "hallucination_rate", "new_fact_accuracy", "abstention_rate", "fabrication_rate",
           "drift_kl", "param_drift_l2")
PLOTTED = ("known_accuracy", "new_fact_accuracy", "abstention_rate", "fabrication_rate", "drift_kl")


# ------------------------------------------------------------------------------------ settings


def settings(args) -> dict:
    """The run settings: --quick (a smoke run), the GPU scale, or the CPU scale.

    The CPU scale keeps the papers' design (SliCK categories, a mix half Unknown, the format stage, SFT
    trained until it knows most of the new facts, equal steps for every row, a known probe of 150 facts so
    one fact is 0.7 points) and shrinks what costs compute on two cores: a lighter triage (3 prompts x 4
    shots, 2 samples) of a seeded 1,200 of the facts, four fifths of the Known ones held out as known probe
    candidates (the evaluator keeps up to 150 the reference answers), 32 Unknown training facts, batch 8,
    and two evaluations."""
    quick, cpu = args.quick, args.device == "cpu"
    if quick:
        scale = {"triage": {"prompts": 2, "shots": 4, "samples": 2, "temperature": 0.5}, "max_facts": 120,
                 "max_unknown_train": 8, "unknown_probe_size": 8, "steps": 2, "eval_interval": 2,
                 "batch_size": 8, "warmup_steps": 0, "max_probe_size": 8}
    elif cpu:
        scale = {"triage": {"prompts": 3, "shots": 4, "samples": 2, "temperature": 0.5}, "max_facts": 1200,
                 "known_probe_fraction": 0.8, "max_unknown_train": 32, "unknown_probe_size": 48, "steps": 48,
                 "eval_interval": 24, "batch_size": 8, "warmup_steps": 4, "max_probe_size": 150}
    else:
        scale = {"triage": {"prompts": 10, "shots": 4, "samples": 16, "temperature": 0.5}, "max_facts": None,
                 "max_unknown_train": None, "unknown_probe_size": 100, "steps": 300, "eval_interval": 25,
                 "batch_size": 16, "warmup_steps": 10, "max_probe_size": 400}
    methods = args.methods.split(",") if args.methods else list(MAIN_ROWS)
    if args.sweep:
        methods += [m for m in SWEEP_ROWS if m not in methods]
    s = {
        "model": args.model,
        "facts": args.facts,
        "triage": scale["triage"],
        "triage_seed": 0,
        "max_facts": args.max_facts or scale["max_facts"],
        "max_unknown_train": scale["max_unknown_train"],
        "unknown_share": args.unknown_share,
        "known_probe_fraction": scale.get("known_probe_fraction", 0.5),  # of the Known facts (HK and MK)
        "unknown_probe_size": scale["unknown_probe_size"],
        "steps": args.steps or scale["steps"],
        "eval_interval": args.eval_interval or scale["eval_interval"],
        "batch_size": scale["batch_size"],
        "learning_rate": args.lr,
        "warmup_steps": scale["warmup_steps"],
        "max_seq_length": 128,
        "max_probe_size": scale["max_probe_size"],
        # one epoch of the mix's ~32 Known facts is 4 steps, far less than the paper's epoch of 8k facts at
        # batch 128 (~60 steps): three epochs, still on facts the model knows
        "format_stage": {"epochs": 1 if quick else 3},
        "seeds": list(range(args.seeds if args.seeds else (1 if quick else 3))),
        "methods": methods,
        # the sweep's extra rows run on the first sweep_seeds seeds only (one model is enough for it)
        "sweep_rows": [m for m in SWEEP_ROWS if m in methods and m not in MAIN_ROWS] if args.sweep else [],
        "sweep_seeds": args.sweep_seeds,
        "ds_optimizer": args.ds_optimizer,
        "budget_seconds": args.budget_seconds,
        "jobs": args.jobs,
    }
    return s


# -------------------------------------------------------------------------------------- triage


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


TRIAGE_SHARD = 600  # facts per triage call: each shard is SliCK with its own exemplar pool, cached on its own


def cached_triage(s: dict, work: Path, device: str):
    """(examples, TriageResult, info) for a seeded sample of the facts, triaged with the trainer's triage.

    The sample is cut into shards of TRIAGE_SHARD facts, each triaged (exemplars from the same relation
    within the shard, as SliCK does) and cached as its own JSON, so a larger --max-facts reuses the shards
    a smaller one computed: random.sample draws a larger sample's first facts exactly as a smaller one."""
    from tuneguard_trainer import data as data_mod, triage as tri

    facts_path = data_mod.resolve_data_path(s["facts"])
    examples = list(data_mod.load_examples(s["facts"]))
    if s["max_facts"]:
        drawn = random.Random("bench-facts").sample(examples, min(s["max_facts"], len(examples)))
        shards = [sorted(drawn[i:i + TRIAGE_SHARD], key=lambda e: e.id) for i in range(0, len(drawn), TRIAGE_SHARD)]
    else:
        shards = [examples]
    parts = [_triage_shard(shard, s, work, device, _sha(facts_path)) for shard in shards]
    res = tri.TriageResult(categories={}, p_greedy={}, p_sample={}, seconds=0.0)
    for c in parts:
        res.categories.update(c["categories"])
        res.p_greedy.update(c["p_greedy"])
        res.p_sample.update(c["p_sample"])
        res.seconds += c["seconds"]
    examples = sorted((e for shard in shards for e in shard), key=lambda e: e.id)
    info = {"seconds": round(res.seconds, 1), "shards": len(shards), "device": parts[0]["device"]}
    print(f"triage of {len(examples)} facts ({len(shards)} shard(s), {info['seconds']} s): {res.counts()}", flush=True)
    return examples, res, info


def _triage_shard(examples: list, s: dict, work: Path, device: str, facts_sha: str) -> dict:
    import torch

    from tuneguard import api
    from tuneguard_trainer import models, triage as tri

    model_path = models.resolve_model(s["model"])
    key = json.dumps({"model": str(model_path), "facts": facts_sha, "triage": s["triage"],
                      "seed": s["triage_seed"], "ids": [e.id for e in examples],
                      "code": _sha(Path(tri.__file__))}, sort_keys=True)  # a changed triage re-triages
    path = work / f"triage-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        print(f"triage: reusing {path}", flush=True)
        return json.loads(path.read_text())
    model, tok = models.load_model(model_path, device=device, dtype=torch.float32)
    t0 = time.time()
    res = tri.triage(model, tok, examples, api.TriageSpec(**s["triage"]), seed=s["triage_seed"], batch_size=32,
                     progress=True)
    c = {"categories": res.categories, "p_greedy": res.p_greedy, "p_sample": res.p_sample,
         "seconds": round(time.time() - t0, 1), "device": device, "settings": s["triage"], "model": s["model"],
         "facts": len(examples)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(c))
    tmp.replace(path)
    print(f"triage shard of {len(examples)} facts in {c['seconds']} s on {device}: {res.counts()}", flush=True)
    del model
    gc.collect()
    return c


def build_mix(examples, categories: dict, s: dict, work: Path) -> dict:
    """Writes train.jsonl, known-probe.jsonl, unknown-probe.jsonl; returns their paths and sizes."""
    rng = random.Random("bench-mix")
    by = {}
    for e in sorted(examples, key=lambda e: e.id):
        by.setdefault(categories[e.id], []).append(e)
    hk, mk, wk, unk = (list(by.get(c, [])) for c in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"))
    known_probe, known_train = [], []
    for lst in (hk, mk, unk):
        rng.shuffle(lst)
    for lst in (hk, mk):  # the paper's held-out Known facts, stratified by category
        n_kp = int(round(s["known_probe_fraction"] * len(lst)))
        known_probe, known_train = known_probe + lst[:n_kp], known_train + lst[n_kp:]
    n_up = min(s["unknown_probe_size"], len(unk) // 3)
    unknown_probe, unk_train = unk[:n_up], unk[n_up:]
    if s.get("max_unknown_train"):
        unk_train = unk_train[:s["max_unknown_train"]]
    other = known_train + wk
    rng.shuffle(other)
    share = s["unknown_share"]
    max_other = int(math.floor(len(unk_train) * (1 - share) / share)) if share > 0 else len(other)
    other = other[:max_other]
    train = sorted(other + unk_train, key=lambda e: e.id)

    def dump(name, items):
        rows = []
        for e in items:
            row = {"id": e.id, "question": e.question, "answers": e.answers}
            if e.relation:
                row["relation"] = e.relation
            if e.paraphrases:  # the paraphrase shift asks them (and the leakage check compares them)
                row["paraphrases"] = e.paraphrases
            rows.append(json.dumps(row) + "\n")
        p = work / name
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text("".join(rows))
        tmp.replace(p)  # atomic: a run that reads the file never sees half of it
        return p

    work.mkdir(parents=True, exist_ok=True)
    files = {"train": dump("train.jsonl", train), "known": dump("known-probe.jsonl", known_probe),
             "unknown": dump("unknown-probe.jsonl", unknown_probe)}
    comp = {c: sum(categories[e.id] == c for e in train) for c in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")}
    mix = {"files": {k: str(v) for k, v in files.items()}, "train": len(train), "train_categories": comp,
           "unknown_share": round(comp["Unknown"] / max(1, len(train)), 3),
           "known_probe": len(known_probe), "unknown_probe": len(unknown_probe)}
    print(f"mix: {mix['train']} training facts {comp} (Unknown share {mix['unknown_share']}), "
          f"known probe {len(known_probe)}, unknown probe {len(unknown_probe)}", flush=True)
    if mix["unknown_share"] < share - 1e-9:
        print(f"WARNING: only {mix['unknown_share']:.2f} of the mix is Unknown (wanted {share})", flush=True)
    return mix


# ------------------------------------------------------------------------------------- one run


def manifest(method: str, seed: int, s: dict, mix: dict, device: str) -> dict:
    block, policy, guardrails = METHODS[method]
    return {
        "apiVersion": "tuneguard.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"bench-{method}-s{seed}".replace(".", "p"), "namespace": "bench"},  # a DNS label
        "spec": {
            "model": {"uri": s["model"]},
            "datasets": {"train": mix["files"]["train"],
                         "probes": {"known": mix["files"]["known"], "unknown": mix["files"]["unknown"]}},
            "method": block,
            "triage": {**s["triage"], "unknownPolicy": policy},
            "formatStage": {"epochs": s["format_stage"]["epochs"], "learningRate": s["learning_rate"]},
            "training": {"maxSteps": s["steps"], "batchSize": s["batch_size"], "learningRate": row_lr(method, s),
                         "maxSeqLength": s["max_seq_length"], "warmupSteps": s["warmup_steps"], "seed": seed,
                         # no resumable checkpoints inside a benchmark run (the best model is still saved)
                         "checkpointInterval": s["steps"] * 100},
            "deepspeed": ds_block(s, device),
            "evaluation": {"intervalSteps": s["eval_interval"], "maxProbeSize": s["max_probe_size"]},
            "guardrails": guardrails or {"action": "warn"},
            "resources": {"workers": 1, "gpusPerWorker": 0 if device == "cpu" else 1},
        },
    }


def row_lr(method: str, s: dict) -> float:
    return s["learning_rate"] * (LORA_LR_FACTOR if method in LORA_ROWS else 1.0)


def ds_block(s: dict, device: str) -> dict:
    """ZeRO 0 on one device; on CUDA optionally torch's AdamW instead of DeepSpeed's JIT-built FusedAdam
    (spec.deepspeed.config, the product's documented override), for machines without nvcc."""
    block = {"zeroStage": 0, "precision": "fp32" if device == "cpu" else "bf16"}
    if device == "cuda" and s.get("ds_optimizer") == "torch":
        block["config"] = {"optimizer": {"params": {"torch_adam": True}}}
    return block


def seed_triage_cache(job, run_dir: Path, triage_result, train_path: str, known_path: str, unknown_path: str):
    """The loop's triage.pt for this job: the cached triage plus the trainer's build_splits, keyed by the
    loop's own digest, so loop.run reuses it instead of triaging again."""
    from tuneguard_trainer import data as data_mod, loop, triage as tri
    from tuneguard_trainer.checkpoints import TRIAGE_FILE, atomic_torch_save

    spec = job.spec
    train = data_mod.load_examples(train_path, "qa")
    known = data_mod.load_examples(known_path, "qa", min_examples=1)
    unknown = data_mod.load_examples(unknown_path, "qa", min_examples=1)
    splits = tri.build_splits(train, triage_result, spec.datasets, spec.triage, seed=spec.training.seed,
                              known_probe_examples=known, unknown_probe_examples=unknown)
    splits.notes.append("triage computed once by bench/hallucination_table.py and shared by all runs")
    payload = {"digest": loop.spec_digest(spec), "counts": dict(splits.counts), "splits": splits}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, run_dir / TRIAGE_FILE)


def share_format_stage(runs: Path, seed: int, run_dir: Path) -> Path:
    """Hard-links this seed's format-stage snapshot (saved by its first run) into ``run_dir``. The loop reuses
    it only when its digest matches the job (same model, data, Known facts, stage settings and seed), which
    holds for every row: the format stage does not depend on the method or the Unknown policy."""
    from tuneguard_trainer.format_stage import SNAPSHOT_FILE

    shared = runs / f"format-stage-s{seed}.pt"
    if shared.exists():
        os.link(shared, run_dir / SNAPSHOT_FILE)
    return shared


def _publish_snapshot(snapshot: Path, shared: Path) -> None:
    """The first finished run of a seed shares its snapshot; a parallel run of the same seed that trained
    the identical stage meanwhile keeps the one already there."""
    try:
        os.link(snapshot, shared)
    except FileExistsError:
        pass


# settings that choose which rows run and how fast, not what a run computes
_RUN_CHOICE = ("seeds", "seeds_planned", "methods", "sweep_rows", "sweep_seeds", "budget_seconds", "jobs")


def reused_runs(path: Path, s: dict, mix: dict) -> dict:
    """reports[method][seed] of an earlier result file, for the rows and seeds this run plans, if it ran the
    same settings on the same mix (same counts); a mismatch is an error, never a silent mix of two tables."""
    old = json.loads(path.read_text())
    mine = {k: v for k, v in s.items() if k not in _RUN_CHOICE}
    theirs = {k: v for k, v in old["settings"].items() if k not in _RUN_CHOICE}
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise SystemExit(f"--reuse {path}: its runs used other settings ({', '.join(diff)}); drop --reuse")
    same_mix = {k: v for k, v in mix.items() if k != "files"} == {k: v for k, v in old["mix"].items() if k != "files"}
    if not same_mix:
        raise SystemExit(f"--reuse {path}: its training mix differs from this run's (another triage?); drop --reuse")
    out: dict = {}
    for m, by in old["runs"].items():
        for sd, rec in by.items():
            if m in s["methods"] and int(sd) in s["seeds"]:
                rep = {k: v for k, v in rec.items() if k != "triage_counts"}
                rep["triage"] = {"counts": rec.get("triage_counts")}
                out.setdefault(m, {})[int(sd)] = rep
    return out


CODE_FILE = "code.sha"  # beside a run's manifest: the code that ran it


@functools.cache
def code_digest() -> str:
    """The trainer's and the shared core's source, read once per process (the code this process runs). A run
    directory is reused only for the same code; across a code change, --reuse RESULT.json takes finished runs
    on purpose (after a rerun has checked them)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    sources = [*(root / "trainer_image" / "tuneguard_trainer").rglob("*.py"), *(root / "tuneguard").glob("*.py")]
    for f in sorted(sources):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def finished_report(method: str, seed: int, s: dict, mix: dict, device: str, runs: Path):
    """The report of a finished run of exactly this manifest and code (cleaned up: no weights left), or None."""
    run_dir = runs / f"{method}-s{seed}"
    mpath, rpath, cpath = run_dir / "manifest.yaml", run_dir / "report.json", run_dir / CODE_FILE
    text = yaml.safe_dump(manifest(method, seed, s, mix, device), sort_keys=False)
    if (rpath.exists() and mpath.exists() and mpath.read_text() == text and cpath.exists()
            and cpath.read_text() == code_digest() and not (run_dir / "best-model").exists()):
        return json.loads(rpath.read_text())
    return None


def run_one(method: str, seed: int, s: dict, mix: dict, triage_result, device: str, runs: Path) -> dict:
    from tuneguard.validation import load_job
    from tuneguard_trainer import loop
    from tuneguard_trainer.format_stage import SNAPSHOT_FILE

    doc = manifest(method, seed, s, mix, device)
    text = yaml.safe_dump(doc, sort_keys=False)
    run_dir = runs / f"{method}-s{seed}"
    mpath = run_dir / "manifest.yaml"
    rpath = run_dir / "report.json"
    done = finished_report(method, seed, s, mix, device, runs)
    if done is not None:
        print(f"[{method} seed {seed}] reusing {rpath}", flush=True)
        return done
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    mpath.write_text(text)
    (run_dir / CODE_FILE).write_text(code_digest())
    job = load_job(mpath)  # the product's validation, as `tuneguard run` does
    seed_triage_cache(job, run_dir, triage_result, *(mix["files"][k] for k in ("train", "known", "unknown")))
    shared = share_format_stage(runs, seed, run_dir)
    t0 = time.time()
    # one process group (a world of one) serves all runs: loop.run joins it idempotently
    loop.run(mpath, run_dir, device, job=job, print_table=False, progress=False)
    report = json.loads(rpath.read_text())
    # keep the report, drop the weights (a benchmark does not need 12 copies of the model)
    for sub in ("best-model", "checkpoints"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
    snapshot = run_dir / SNAPSHOT_FILE
    if snapshot.exists():
        _publish_snapshot(snapshot, shared)  # the next rows of this seed start from the same snapshot
        snapshot.unlink()
    fin = report["final"]["figures"]
    print(f"[{method} seed {seed}] {time.time() - t0:.0f} s: known {fin['known_accuracy']:.3f} "
          f"(base {report['base']['known_accuracy']:.3f}) new {fin['new_fact_accuracy']} "
          f"abst {fin['abstention_rate']} fab {fin['fabrication_rate']} drift {fin['drift_kl']}", flush=True)
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
    return report


# ----------------------------------------------------------------------------------- aggregation


def per_run_figures(report: dict) -> dict:
    """One run's figures at its end. Drops are measured from the reference (the format-stage snapshot),
    whose known accuracy is 100 % by construction (the known probe keeps only the facts it answers), so the
    paper's relative drop from the peak equals the absolute drop here unless an evaluation exceeds it."""
    ref, fin = report["reference"]["figures"], report["final"]["figures"]
    out = {f: fin.get(f) for f in FIGURES}
    forgetting = report["forgetting"]
    out["known_drop"] = forgetting["absolute_drop"]
    out["known_relative_drop"] = forgetting["relative_drop_from_peak"]
    for f in ("known_accuracy", "new_fact_accuracy", "fabrication_rate", "abstention_rate"):
        out[f"base_{f}"] = report["base"].get(f)
        out[f"reference_{f}"] = ref.get(f)
    out["final_step"] = report["final"]["step"]
    out["step_seconds"] = report["throughput"]["step_seconds_mean"]
    return out


# probe behind each rate (for the bootstrap): known probe, new facts, unknown probe
PROBE_OF = {"known_accuracy": "known_probe", "hallucination_rate": "known_probe", "known_drop": "known_probe",
            "known_relative_drop": "known_probe", "new_fact_accuracy": "new_facts", "abstention_rate": "unknown_probe",
            "fabrication_rate": "unknown_probe"}


def bootstrap_ci(values: list, sizes: list, *, reps: int = 4000, seed: int = 0):
    """95 % interval of the mean over seeds, resampling seeds and, within a seed, the probe's facts.

    The report keeps each rate, not each fact's outcome, so facts are resampled parametrically: a rate p
    on n facts becomes Binomial(n, p) / n, which is what resampling n independent facts gives. A figure
    with no probe size (drift) resamples seeds only. A drop from 100 % (1 - accuracy) resamples the same way:
    1 - Binomial(n, 1 - p) / n has the distribution of Binomial(n, p) / n."""
    import numpy as np

    pairs = [(v, n) for v, n in zip(values, sizes) if v is not None]
    if not pairs:
        return None
    rng = np.random.default_rng(seed)
    vals = np.array([v for v, _ in pairs], dtype=float)
    ns = np.array([n or 0 for _, n in pairs], dtype=int)
    pick = rng.integers(0, len(pairs), size=(reps, len(pairs)))  # seeds resampled
    v, n = vals[pick], ns[pick]
    k = rng.binomial(np.maximum(n, 1), np.clip(v, 0.0, 1.0))  # facts resampled within each seed
    draw = np.where(n > 0, k / np.maximum(n, 1), v)
    lo, hi = np.quantile(draw.mean(axis=1), [0.025, 0.975])
    return [float(lo), float(hi)]


def aggregate(reports: dict) -> dict:
    """reports[method][seed] -> {table: {method: {figure: {mean, std, values, ci95}}}, curves}"""
    table, curves = {}, {}
    for method, by_seed in reports.items():
        rows = [per_run_figures(r) for r in by_seed.values()]
        sizes = [r.get("evaluation", {}).get("sizes", {}) for r in by_seed.values()]
        keys = rows[0].keys() if rows else []
        table[method] = {}
        for k in keys:
            vals = [r[k] for r in rows]
            m, sd = mean_std(vals)
            entry = {"mean": m, "std": sd, "values": vals}
            if k in FIGURES or k in PROBE_OF:
                n = [sz.get(PROBE_OF[k]) if k in PROBE_OF else None for sz in sizes]
                entry["ci95"] = bootstrap_ci(vals, n)
            table[method][k] = entry
        # curves over steps: step 0 = the reference (the format-stage snapshot the fact stage starts from)
        steps = sorted({h["step"] for r in by_seed.values() for h in r["history"]})
        curves[method] = {"steps": [0] + steps}
        for f in FIGURES:
            series = []
            for r in by_seed.values():
                pts = {0: r["reference"]["figures"].get(f)}
                pts.update({h["step"]: h["figures"].get(f) for h in r["history"]})
                series.append([pts.get(st) for st in curves[method]["steps"]])
            curves[method][f] = series
    return {"table": table, "curves": curves}


def expectations(table: dict, n_seeds: int) -> list[dict]:
    """The papers' expectations, each with what was measured and whether it held (None: not measured)."""
    def g(m, k):
        return (table.get(m, {}).get(k) or {}).get("mean")

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    out = []

    def expect(text, measured, held):
        out.append({"expectation": text, "measured": measured, "held": held})

    sft_rel, sd_rel = g("sft", "known_relative_drop"), g("self-distill", "known_relative_drop")
    sft_new, sd_new = g("sft", "new_fact_accuracy"), g("self-distill", "new_fact_accuracy")
    if sft_new is not None:
        expect("plain SFT learns >= 80% of the new facts (precondition)", f"SFT new-fact accuracy {pct(sft_new)}",
               sft_new >= 0.8)
    if sft_rel is not None:
        ci = (table["sft"]["known_relative_drop"].get("ci95") or [None])[0]
        expect("SFT's relative drop of known accuracy from its peak is >= 10% (paper: ~15%)",
               f"SFT {pct(sft_rel)} (95% interval from {pct(ci)})", sft_rel >= 0.10)
    if sft_rel is not None and sd_rel is not None:
        expect("self-distill's relative drop is at most a third of SFT's (paper: ~3% vs ~15%)",
               f"self-distill {pct(sd_rel)} vs SFT {pct(sft_rel)}", sd_rel <= sft_rel / 3 if sft_rel > 0 else None)
    if sft_new is not None and sd_new is not None:
        expect("self-distill learns >= 90% as many new facts as SFT",
               f"self-distill {pct(sd_new)} vs SFT {pct(sft_new)} (ratio {sd_new / sft_new:.2f})" if sft_new else "-",
               sd_new >= 0.9 * sft_new if sft_new else None)
    base_rel = g("self-distill-base-teacher", "known_relative_drop")
    if base_rel is not None and sd_rel is not None:
        expect("the format-stage teacher forgets less than the base-model teacher",
               f"format-stage teacher {pct(sd_rel)} vs base teacher {pct(base_rel)}", sd_rel < base_rel)
    # among the rows that deliver a trained model (a rollback may deliver the untrained snapshot)
    drops = {m: g(m, "known_relative_drop") for m in MAIN_ROWS
             if m != "sft-rollback" and g(m, "known_relative_drop") is not None}
    if "freeze" in drops and len(drops) > 1:
        expect("freeze (attention-only) has the smallest drop of the trained rows",
               ", ".join(f"{m} {pct(v)}" for m, v in sorted(drops.items(), key=lambda kv: kv[1])),
               drops["freeze"] <= min(v for m, v in drops.items() if m != "freeze"))
    fa, fs = g("sft-abstain", "fabrication_rate"), g("sft", "fabrication_rate")
    if fa is not None and fs is not None:
        expect("relabelling Unknown to abstain lowers fabrication",
               f"sft-abstain {pct(fa)} vs sft {pct(fs)} (abstention {pct(g('sft-abstain', 'abstention_rate'))} vs "
               f"{pct(g('sft', 'abstention_rate'))})", fa < fs)
    return out


def plot(curves: dict, out: Path, title_suffix: str, prefix: str = "hallucination") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for f in PLOTTED:
        fig, ax = plt.subplots(figsize=(6, 4))
        for method, c in curves.items():
            steps = c["steps"]
            series = c[f]
            mean, lo, hi, xs = [], [], [], []
            for i, st in enumerate(steps):
                v = [s[i] for s in series if i < len(s) and s[i] is not None]
                if not v:
                    continue
                xs.append(st)
                mean.append(sum(v) / len(v))
                lo.append(min(v))
                hi.append(max(v))
            if not xs:
                continue
            line, = ax.plot(xs, mean, marker="o", markersize=3, label=method)
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        ax.set_xlabel("fact-stage step (0 = after the format stage)")
        ax.set_ylabel(f)
        ax.set_title(f"{f} {title_suffix}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"{prefix}-{f.replace('_', '-')}.png"
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(name)
    return written


def _cell(t: dict, k: str, scale: float = 100.0, digits: int = 1) -> str:
    e = t.get(k) or {}
    if e.get("mean") is None:
        return "-"
    ci = e.get("ci95")
    rng = f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]" if ci else ""
    return f"{scale * e['mean']:.{digits}f}{rng}"


def _probe_sizes(result: dict, probe: str) -> str:
    """The evaluated size of a probe over the runs (one number, or a range across seeds)."""
    sizes = sorted({(r.get("evaluation") or {}).get("sizes", {}).get(probe) for by in result["runs"].values()
                    for r in by.values()} - {None})
    return "?" if not sizes else str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"


def markdown(result: dict) -> str:
    s, table = result["settings"], result["aggregate"]["table"]
    hdr = ["method", "seeds", "known acc. (%)", "relative drop from peak (%)", "new-fact acc. (%)", "abstention (%)",
           "fabrication (%)", "drift KL (nats/token)", "step (s)"]
    rows = []
    for m in s["methods"]:
        t = table.get(m)
        if not t:
            continue
        rows.append([m, len(t["known_accuracy"]["values"]), _cell(t, "known_accuracy"), _cell(t, "known_relative_drop"), _cell(t, "new_fact_accuracy"),
                     _cell(t, "abstention_rate"), _cell(t, "fabrication_rate"), _cell(t, "drift_kl", 1.0, 3),
                     _cell(t, "step_seconds", 1.0, 2)])
    ref = table.get("sft", next(iter(table.values()), {}))
    mix = result["mix"]
    fs = s.get("format_stage", {})
    lines = [
        f"# Hallucination table: {s['model']} on {s['facts']}",
        "",
        ("**QUICK SMOKE RUN (CPU, tiny settings): proves the script end to end; the figures mean nothing.**\n"
         if result["quick"] else ""),
        ("" if result.get("complete", True) or result["quick"] else
         f"**Incomplete: of {len(s.get('seeds_planned', s['seeds']))} planned seeds, the rows have the number in "
         f"their seeds column; rows not listed have not run.**\n"),
        f"Device {result['machine']['device']}; {len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))}). "
        f"Every row first runs the format stage (SFT on the mix's Known facts, {fs.get('epochs', 1)} epoch(s), shared "
        f"by the rows of a seed), then its own fact stage of {s['steps']} optimizer steps, batch {s['batch_size']}, "
        f"lr {s['learning_rate']}, warm-up {s['warmup_steps']} then cosine; evaluation every {s['eval_interval']} "
        f"steps. Triage: SliCK with {s['triage']['prompts']} prompts x {s['triage']['shots']} shots, "
        f"{s['triage']['samples']} samples at T={s['triage']['temperature']} (computed once for "
        f"{result['triage']['facts']} facts, {result['triage']['seconds']} s): {result['triage']['counts']}. "
        f"Training mix: {mix['train']} facts, {mix['train_categories']} (Unknown share {mix['unknown_share']}); "
        f"known probe candidates: {mix['known_probe']} held-out Known (HighlyKnown and MaybeKnown) facts, of which "
        f"the evaluator keeps {_probe_sizes(result, 'known_probe')} the reference answers; unknown probe "
        f"{_probe_sizes(result, 'unknown_probe')} of {mix['unknown_probe']} held-out Unknown facts; new facts "
        f"{_probe_sizes(result, 'new_facts')}."
        + (f" Runs went {s['jobs']} side by side, one torch thread each: the step column compares rows, not "
           f"machines." if s.get("jobs", 1) > 1 else ""),
        "",
        "Mean over seeds at the last step, with a 95 % bootstrap interval (seeds and probe facts resampled). "
        "Drops are measured from the reference, the format-stage snapshot every fact stage starts from; the known "
        "probe keeps only the facts the reference answers correctly, so its known accuracy is 100 % and the "
        "paper's relative drop from the peak equals the absolute drop in points. The base model (before the "
        "format stage), on the same probes: known accuracy "
        f"{_cell(ref, 'base_known_accuracy')} %, new-fact accuracy {_cell(ref, 'base_new_fact_accuracy')} %, "
        f"fabrication {_cell(ref, 'base_fabrication_rate')} %.",
        "",
        markdown_table(hdr, rows),
        "",
        "New-fact accuracy of `sft-abstain` counts only the WeaklyKnown training facts (its Unknown facts are "
        "trained to \"I don't know\", so they are not new facts there). `sft-rollback` is the product's early "
        "stop: `guardrails: {maxHallucinationIncrease: 0.10, action: rollback}`; its row is the model it "
        "delivers."
        + (f" LoRA rows (`lora-*`: peft, rank 16, alpha 32, every linear layer of the decoder, on the format-stage "
           f"snapshot) train at lr {LORA_LR_FACTOR:g}x the others' ({s['learning_rate'] * LORA_LR_FACTOR:g}), the ratio "
           f"Biderman et al. found best for LoRA, untuned here; `lora-self-distill`'s teacher is the same model with "
           f"the adapter off." if any(m in table for m in LORA_ROWS) else ""),
        "",
        "## The papers' expectations",
        "",
        markdown_table(["expectation", "measured", "held"],
                       [[e["expectation"], e["measured"], yes_no(e["held"])] for e in result["expectations"]]),
        "",
        "## Over steps",
        "",
    ]
    for name in result["plots"]:
        lines.append(f"![{name}]({name})")
    lines += ["", "Lines: mean over seeds; bands: min-max over seeds; step 0 is the format-stage snapshot."]
    lines += shift_section(result)
    lines += ["", f"Reproduce: `{result['command']}`", ""]
    return "\n".join(l for l in lines if l is not None)


def shift_gaps(run: dict) -> dict:
    """{(shift, probe): [(step, gap), ...]} of one run: step 0 is the reference (the format-stage snapshot)."""
    out: dict = {}
    ref = (run.get("shifts") or {}).get("reference") or {}
    for shift, probes in ref.items():
        for probe, f in probes.items():
            out.setdefault((shift, probe), []).append((0, f.get("gap")))
    for h in run.get("history") or []:
        for shift, probes in (h.get("shifts") or {}).items():
            for probe, f in probes.items():
                out.setdefault((shift, probe), []).append((h["step"], f.get("gap")))
    return out


def shift_section(result: dict) -> list[str]:
    """Robustness gaps (accuracy asked unshifted (as the probe asks it) minus asked shifted, same facts) per row and shift over the
    evaluations, mean over seeds: does a method's gap grow as it learns new facts?"""
    rows, steps = [], set()
    per: dict = {}
    for m in result["settings"]["methods"]:
        for run in (result["runs"].get(m) or {}).values():
            for key, pts in shift_gaps(run).items():
                for step, g in pts:
                    if g is not None:
                        per.setdefault((m, *key), {}).setdefault(step, []).append(g)
                        steps.add(step)
    if not per:
        return []
    steps = sorted(steps)
    for (m, shift, probe), by_step in per.items():
        rows.append([m, shift, probe] + [f"{100 * sum(v) / len(v):.1f}" if (v := by_step.get(st)) else "-"
                                         for st in steps])
    decoding = next((r.get("evaluation", {}).get("decoding") for by in result["runs"].values() for r in by.values()
                     if (r.get("evaluation") or {}).get("decoding")), None) or {}
    return ["", "## Shift tests: robustness gap over steps", "",
            "Accuracy asked unshifted (as the probes ask it) minus asked shifted, on the same facts (points; mean over seeds): the known "
            "probe's and the new facts' first "
            f"{decoding.get('shift_probe_size', '?')} facts asked as a paraphrase (another template of the relation), "
            "with seeded noise (a typo, lower case or extra words) and in the other prompt format (zero-shot: the "
            "probes are asked few-shot). Step 0 is the reference (the format-stage snapshot). Decoding: "
            f"{decoding.get('strategy', 'greedy')}, at most {decoding.get('max_new_tokens', '?')} new tokens. A "
            "negative gap: the shifted form is answered better.", "",
            markdown_table(["method", "shift", "probe"] + [f"step {st}" for st in steps], rows)]


CORE_ROWS = ("sft", "self-distill", "self-distill-base-teacher", "freeze")  # what the table must decide


def task_order(s: dict, planned: list) -> list:
    """(row, seed) in the order a time budget cuts them last: every row of the first seed, the four core
    rows of the other seeds, the sweep's extra rows, then the other rows of the other seeds."""
    main = [m for m in s["methods"] if m not in s["sweep_rows"]]
    first, rest = planned[:1], planned[1:]
    tasks = [(m, sd) for sd in first for m in main]
    tasks += [(m, sd) for sd in rest for m in main if m in CORE_ROWS]
    tasks += [(m, sd) for sd in planned[:s["sweep_seeds"]] for m in s["sweep_rows"]]
    tasks += [(m, sd) for sd in rest for m in main if m not in CORE_ROWS]
    return tasks


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):  # a worker ends with the table's process, not orphaned on a kill
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _task(m: str, seed: int, s: dict, mix: dict, triage_result, device: str, runs: Path, deadline):
    """One row and seed in a worker; None once the time budget is spent (the row then has fewer seeds)."""
    if deadline is not None and time.time() > deadline and finished_report(m, seed, s, mix, device, runs) is None:
        print(f"[{m} seed {seed}] skipped: the time budget is spent", flush=True)
        return m, seed, None
    return m, seed, run_one(m, seed, s, mix, triage_result, device, runs)


def run_tasks(tasks, s, mix, triage_result, device: str, runs: Path, jobs: int, deadline):
    """Yields (method, seed, report) as runs finish: in this process with --jobs 1, else in ``jobs`` worker
    processes that take the tasks in order (seeds outermost), each with cores / jobs torch threads. On a
    small CPU two one-thread runs side by side do more steps per second than one two-thread run: a small
    model's decode and optimizer steps do not keep two threads busy."""
    if jobs <= 1:
        for m, seed in tasks:
            yield _task(m, seed, s, mix, triage_result, device, runs, deadline)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = [pool.submit(_task, m, seed, s, mix, triage_result, device, runs, deadline) for m, seed in tasks]
        try:
            for f in as_completed(futures):
                yield f.result()
        except BrokenProcessPool:
            # the kernel's OOM killer is the usual cause: a Gemma-3-270M run peaks at 10.6 GB in fp32
            raise SystemExit(f"--jobs {jobs}: a worker process died mid-run (out of memory? see dmesg). Finished "
                             "runs are kept in their run directories; rerun the same command with --jobs 1 to go on")


def calibrate(s: dict, mix: dict, triage_result, args, work: Path, out: Path, t0: float) -> int:
    s = dict(s, methods=["sft"], seeds=[0])
    rep = run_one("sft", 0, s, mix, triage_result, args.device, work / "calibration")
    curve = [(h["step"], h["figures"].get("new_fact_accuracy"), h["figures"].get("known_accuracy"))
             for h in rep["history"]]
    first = next((st for st, nf, _ in curve if nf is not None and nf >= 0.8), None)
    res = {"settings": s, "mix": mix, "curve": [{"step": a, "new_fact_accuracy": b, "known_accuracy": c}
                                                for a, b, c in curve],
           "first_step_new_facts_ge_80pct": first, "machine": machine_info(args.device),
           "wall_seconds": round(time.time() - t0, 1)}
    write_json(out / f"hallucination-calibration-{args.device}.json", res)
    for a, b, c in curve:
        print(f"step {a:5d}  new-fact accuracy {b}  known accuracy {c}")
    print(f"first step with >= 80% of the new facts learned: {first} (of {s['steps']} with cosine decay to 0)")
    return 0


def main(argv=None) -> int:
    ap = model_bench_parser(__doc__, "tiny CPU smoke run (figures meaningless)")
    ap.add_argument("--work", help="run directories and the triage cache (default runs/bench/hallucination-<quick|cpu|cuda>)")
    ap.add_argument("--seeds", type=int, default=0, help="number of seeds (default 3; quick 1)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps of every run (default: cuda 300, where SFT knew >= 80%% of the new facts from step 150 on an H100; cpu 80, >= 80%% from step 48; quick 2)")
    ap.add_argument("--eval-interval", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--unknown-share", type=float, default=0.5)
    ap.add_argument("--methods", help="comma list (of " + ",".join(METHODS) + "); default " + ",".join(MAIN_ROWS))
    ap.add_argument("--sweep", action="store_true", help="add the lambda sweep: " + ",".join(SWEEP_ROWS))
    ap.add_argument("--sweep-seeds", type=int, default=1, help="seeds of the sweep's extra rows (default 1)")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: tabulate the runs under --work that have finished (rows may have fewer seeds)")
    ap.add_argument("--reuse", metavar="RESULT.json",
                    help="take the finished runs of an earlier result file of the same settings (e.g. to add "
                    "seeds to some rows); only the rest run")
    ap.add_argument("--facts", default="bundled://facts", help="the fact set (a bundled:// name or a JSONL path)")
    ap.add_argument("--ds-optimizer", choices=("torch", "fused"), default="torch",
                    help="CUDA only: DeepSpeed's AdamW as torch.optim.AdamW (torch_adam, no JIT build; default) or "
                         "DeepSpeed's FusedAdam (needs nvcc for its first build)")
    ap.add_argument("--calibrate", action="store_true",
                    help="only sft, seed 0, for --steps (e.g. 600) with frequent evaluations: prints the first step "
                         "at which it knows >= 80%% of the new facts (use it to choose --steps for the table)")
    ap.add_argument("--tag", help="names the result files hallucination-table-<tag>.* (default quick, cpu or cuda); "
                    "for a side experiment next to a table, with --work pointing at that table's runs")
    ap.add_argument("--max-facts", type=int, default=0,
                    help="facts drawn (seeded) and triaged (default: cpu 1200, cuda all); a larger draw keeps the "
                         "smaller one's facts and triage shards. A model that answers few held-out Known facts in "
                         "the evaluation prompt needs more to fill its 150-fact known probe")
    ap.add_argument("--budget-seconds", type=float, default=0,
                    help="start no new run after this many seconds; the table covers the finished runs")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs side by side in worker processes (cores / jobs torch threads each; default 1). Each holds "
                         "its own models: a Gemma-3-270M run peaks at 10.6 GB in fp32, so 24 GB fits one")
    args = ap.parse_args(argv)

    s = settings(args)
    for m in s["methods"]:
        if m not in METHODS:
            ap.error(f"unknown method {m}")
    out = out_dir(args.out)
    # one set of result files per scale: hallucination-table-{quick,cpu,cuda}.* and hallucination-<tag>-*.png
    tag = args.tag or ("quick" if args.quick else args.device)
    # absolute: the manifests name the mix files by path, and a finished run is reused only for the same text
    work = Path(args.work).resolve() if args.work else REPO / "runs" / "bench" / f"hallucination-{tag}"
    work.mkdir(parents=True, exist_ok=True)
    cpu_threads(args.device)
    t0 = time.time()
    examples, triage_result, tinfo = cached_triage(s, work, args.device)
    mix = build_mix(examples, triage_result.categories, s, work)
    if args.calibrate:
        return calibrate(s, mix, triage_result, args, work, out, t0)
    reports: dict = {}
    done_seeds: list = []
    planned = list(s["seeds"])
    cmd = " ".join(["python", "bench/hallucination_table.py"] + (argv if argv is not None else sys.argv[1:]))

    def write_results(final: bool) -> None:
        """The table over the seeds finished so far (written after every seed, so a run cut short by a
        time limit still leaves the table of its complete seeds)."""
        s2 = dict(s, seeds=list(done_seeds), seeds_planned=planned)
        agg = aggregate(reports)
        result = {
            "quick": args.quick, "command": cmd,
            "complete": final and done_seeds == planned and all(
                len(reports.get(m, {})) == sum(1 for x, _ in all_tasks if x == m) for m in s["methods"]),
            "settings": s2,
            "machine": machine_info(args.device),
            "triage": {"counts": triage_result.counts(), "seconds": tinfo["seconds"], "facts": len(examples)},
            "mix": mix,
            "aggregate": agg,
            "expectations": expectations(agg["table"], len(done_seeds)),
            "runs": {m: {str(sd): {"base": r["base"], "reference": r["reference"], "forgetting": r["forgetting"],
                                   "stages": r["stages"], "evaluation": r.get("evaluation"),
                                   "final": r["final"], "history": r["history"],
                                   "throughput": r.get("throughput"), "timings": r.get("timings"),
                                   "triage_counts": r.get("triage", {}).get("counts"), "splits": r.get("splits"),
                                   "frozen_weights": r.get("frozen_weights"), "method": r.get("method"),
                                   "shifts": r.get("shifts")}
                         for sd, r in by.items()} for m, by in reports.items()},
            "wall_seconds": round(time.time() - t0, 1),
        }
        result["plots"] = plot(agg["curves"], out, f"({'quick, ' if args.quick else ''}{args.device})",
                               prefix=f"hallucination-{tag}")
        name = f"hallucination-table-{tag}"
        write_result(out, name, result, markdown(result), echo=final)
        print(f"wrote {out / (name + '.json')}, {out / (name + '.md')} (seeds {done_seeds}) at "
              f"{result['wall_seconds']} s", flush=True)

    all_tasks = tasks = task_order(s, planned)
    if args.reuse:
        reports.update(reused_runs(Path(args.reuse), s, mix))
        tasks = [(m, sd) for m, sd in tasks if sd not in reports.get(m, {})]
        done_seeds[:] = sorted({sd for by in reports.values() for sd in by})
        print(f"reusing {sum(map(len, reports.values()))} runs of {args.reuse}; {len(tasks)} to run", flush=True)
    deadline = t0 + args.budget_seconds if args.budget_seconds else None
    if args.finished_only:  # tabulate what ran elsewhere (e.g. an earlier, cut-short run)
        for m, seed in tasks:
            rep = finished_report(m, seed, s, mix, args.device, work / "runs")
            if rep is not None:
                reports.setdefault(m, {})[seed] = rep
        done_seeds[:] = [sd for sd in planned if any(sd in by for by in reports.values())]
    else:
        left = len(tasks)
        for m, seed, rep in run_tasks(tasks, s, mix, triage_result, args.device, work / "runs", args.jobs, deadline):
            left -= 1
            if rep is not None:
                reports.setdefault(m, {})[seed] = rep
                done_seeds[:] = sorted({sd for by in reports.values() for sd in by})
                if left:  # the table so far, after every run: a cut-short table still leaves it
                    write_results(final=False)
    from tuneguard_trainer import local

    local._destroy_process_group()
    write_results(final=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
