"""The one code path of a FineTuneJob, shared by `tuneguard run` (local) and `tuneguard worker` (pods).

Stages, in order (each a function of this module, or of its own module, called by ``run``):

1. prepare -- validate the manifest, load and validate the data, resolve and load the model, plan
   freezing, check the DeepSpeed settings -- all before the output directory is touched, so a bad dataset
   or config fails with a clear message and leaves the output directory absent or untouched; then join the
   process group (a world of one locally; torchrun's world in a pod);
2. run_triage -- SliCK and the splits on rank 0, broadcast to the other ranks, cached in DIR/triage.pt so a
   resumed run skips it; then the leakage check (leakage.py, spec.leakage) of the splits: refuse fails the
   job here, before the cache is written; drop removes the leaked probes; warn logs them; check_eval_sets
   does the same for spec.evaluation.sets;
3. run_format_stage (format_stage.py) -- SFT on the Known training facts on every rank; its snapshot
   (DIR/format-stage.pt) is the fact stage's start, the self-distill teacher and the reference;
4. evaluate_references -- the evaluator built on the reference, figures of the reference and of the base
   model (rank 0; under ZeRO-3, where parameters are sharded, every rank evaluates);
5. FactStage (fact_stage.py) -- the method (sft | self-distill | freeze; with method.adapter, sft or
   self-distill trains a LoRA adapter on the stage's starting model, adapters.py) under DeepSpeed with a
   DistributedSampler, evaluation every evaluation.intervalSteps and at the end, guardrails (re-read from
   the config file at each evaluation), early stopping, resumable checkpoints (kill -9 safe) and the best
   model as a Hugging Face directory;
6. build_report -- report.json (every stage with its figures), plots, and the final table.

Between 2 and 3, rank 0 makes the plan (plan.py: shares, expected losses, the recommended method), logs it
and puts it in the status and the report; with spec.planOnly the run writes report.json and ends there.

Decisions taken from evaluations (best, early stop, guardrail action: fact_stage.decide_evaluation) are
made on rank 0 and broadcast, so every rank leaves the loop at the same step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tuneguard import api
from tuneguard.validation import load_job

log = logging.getLogger("tuneguard.trainer")


class JobFailed(RuntimeError):
    """A failure with a message for the user (exit code 2 before training, 1 during)."""

    def __init__(self, message: str, before_training: bool = True):
        super().__init__(message)
        self.before_training = before_training


@dataclass
class RunResult:
    report: dict
    out: Path


@dataclass
class Timer:
    phases: dict = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = round(self.phases.get(name, 0.0) + seconds, 3)


def setup_logging(is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    root.setLevel(level)
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def broadcast_object(obj: Any, src: int = 0) -> Any:
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    dist = _dist()
    if dist is not None and dist.get_world_size() > 1:
        dist.barrier()


def spec_digest(spec: api.FineTuneJobSpec) -> str:
    """What the triage result depends on: model, data, triage settings, seed."""
    key = {"model": spec.model.wire(), "datasets": spec.datasets.wire(), "triage": spec.triage.wire(),
           "seed": spec.training.seed, "probe": spec.evaluation.max_probe_size,
           "drift": spec.evaluation.drift_prompts}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------- preparation


@dataclass
class Prepared:
    job: api.FineTuneJob
    config_path: Optional[Path]
    device: str
    model_path: Path
    model: Any
    tokenizer: Any
    examples: list
    probes: dict
    drift_prompts: Optional[list]
    eval_sets: dict  # spec.evaluation.sets: name -> examples
    freeze_plan: Any
    adapter_targets: Optional[list]  # the linear modules that get a LoRA adapter (method.adapter)
    precision: str
    timings: Timer


def prepare(config_path: Path, device: str, job: Optional[api.FineTuneJob] = None) -> Prepared:
    """Everything that can fail because of the user's input, before any output is written."""
    from . import data as data_mod
    from . import engine as eng

    timer = Timer()
    t0 = time.perf_counter()
    if job is None:
        job = load_job(config_path)  # InvalidManifest with field paths
    spec = job.spec
    try:
        device = eng.resolve_device(device)
        precision = eng.resolve_precision(spec.deepspeed.precision, device)
    except eng.EngineConfigError as e:
        raise JobFailed(str(e)) from None
    try:
        examples = data_mod.load_examples(spec.datasets.train, spec.datasets.format)
        probes = {}
        for kind in ("known", "unknown"):
            uri = getattr(spec.datasets.probes, kind)
            if uri:
                probes[kind] = data_mod.load_examples(uri, spec.datasets.format, min_examples=1)
        drift = data_mod.load_prompts(spec.evaluation.drift_prompts) if spec.evaluation.drift_prompts else None
    except data_mod.DatasetError as e:
        raise JobFailed(f"dataset: {e}") from None
    eval_sets = {}
    for s in spec.evaluation.sets or []:
        try:
            eval_sets[s.name] = data_mod.load_examples(s.file, spec.datasets.format, min_examples=1)
        except data_mod.DatasetError as e:
            raise JobFailed(f"evaluation.sets[{s.name}]: {e}") from None
    timer.add("load_data", time.perf_counter() - t0)

    t0 = time.perf_counter()
    from . import models

    try:
        model_path = models.resolve_model(spec.model)
    except models.ModelError as e:
        raise JobFailed(str(e)) from None
    import torch

    model, tok = models.load_model(model_path, device="cpu", dtype=torch.float32)
    timer.add("load_model", time.perf_counter() - t0)

    freeze_plan = None
    if spec.method.type == "freeze":
        from . import freezing

        try:
            freeze_plan = freezing.plan(model, spec.method.freeze)
        except freezing.FreezeError as e:
            raise JobFailed(str(e)) from None
    adapter_targets = None
    if spec.method.adapter is not None:
        from . import adapters

        try:
            adapter_targets = adapters.target_modules(model, spec.method.adapter)
        except adapters.AdapterError as e:
            raise JobFailed(str(e)) from None
    return Prepared(job=job, config_path=config_path, device=device, model_path=model_path, model=model,
                    tokenizer=tok, examples=examples, probes=probes, drift_prompts=drift, eval_sets=eval_sets,
                    freeze_plan=freeze_plan, adapter_targets=adapter_targets, precision=precision, timings=timer)


# ------------------------------------------------------------------------------- triage, splits


def triage_and_split(p: Prepared):
    """(triage counts dict, Splits) computed on this process (rank 0), with triage.prepare: it triages
    the training file together with any probe files (SliCK, or a closed-book check when disabled)."""
    from . import triage as triage_mod

    spec = p.job.spec
    splits, result = triage_mod.prepare(p.model, p.tokenizer, spec, seed=spec.training.seed)
    counts = dict(getattr(splits, "counts", None) or result.counts())
    return counts, splits


def check_leakage(splits, spec: api.FineTuneJobSpec):
    """The leakage check (leakage.py) of the splits under spec.leakage: (LeakageReport, the refusal's
    message or None). Leaks and training duplicates are logged whatever the policy."""
    from . import leakage as leak_mod

    rep = leak_mod.check_splits(splits, spec.leakage.similarity)
    if rep.train_pairs:
        log.warning("leakage: %d training example(s) duplicate an earlier one (kept), e.g. %s",
                    rep.counts()["train_duplicates"], rep.train_pairs[0].line())
    if not rep.pairs:
        log.info("leakage: no probe question duplicates a training question (%.2f s)", rep.seconds)
        return rep, None
    if spec.leakage.policy == "refuse":
        return rep, (f"leakage: {rep.describe()}\nremove these probes or training facts, or set "
                     f"spec.leakage.policy: drop (or warn)")
    log.warning("leakage (policy %s): %s", spec.leakage.policy, rep.describe(limit=5))
    return rep, None


def check_eval_sets(sets: dict, train, spec: api.FineTuneJobSpec) -> tuple[dict, dict]:
    """(the sets after spec.leakage's policy, per set {leaked, dropped}): each set's questions against the
    training questions, as the probes are (deterministic: every rank gets the same answer)."""
    if not sets:
        return sets, {}
    from . import leakage as leak_mod

    rep = leak_mod.find_leaks(train, sets, spec.leakage.similarity, check_train=False)
    if rep.pairs and spec.leakage.policy == "refuse":
        raise JobFailed(f"leakage in evaluation.sets: {rep.describe()}\nremove these questions from the set or "
                        f"the training data, or set spec.leakage.policy: drop (or warn)")
    out, counts = {}, {}
    for name, exs in sets.items():
        bad = set(rep.leaked.get(name, ()))
        kept = [e for e in exs if e.id not in bad] if spec.leakage.policy == "drop" else list(exs)
        counts[name] = {"examples": len(exs), "leaked": len(bad), "dropped": len(exs) - len(kept)}
        if bad:
            log.warning("leakage (policy %s): %d question(s) of evaluation set %s duplicate training questions",
                        spec.leakage.policy, len(bad), name)
        if not kept:
            raise JobFailed(f"evaluation.sets[{name}]: every question duplicates a training question (leakage "
                            f"policy drop left none); use questions the job does not train on")
        out[name] = kept
    return out, counts


def _discard_output(out: Path, created_out: bool, info) -> None:
    """A job refused before training leaves no output directory behind that it created itself."""
    if created_out and info.local_rank == 0:
        import shutil

        shutil.rmtree(out, ignore_errors=True)


def run_triage(prepared: Prepared, out: Path, info, tele, timer: Timer, created_out: bool):
    """(counts, Splits, LeakageReport): SliCK triage on rank 0, broadcast to every rank, cached in
    DIR/triage.pt (keyed by spec_digest) so a resumed run skips it; then the leakage check of the splits,
    before the cache is written. A triage that leaves nothing to train, or a leak under policy refuse,
    fails the job and removes an output directory this run created."""
    import torch

    from .checkpoints import TRIAGE_FILE, atomic_torch_save

    spec = prepared.job.spec
    t0 = time.perf_counter()
    digest = spec_digest(spec)
    cached = None
    tri_path = out / TRIAGE_FILE
    if tri_path.exists():
        try:
            c = torch.load(tri_path, weights_only=False)
            cached = c if c.get("digest") == digest else None
        except Exception as e:
            log.warning("ignoring unreadable %s (%s)", tri_path, e)
    if cached is None:
        tele.stage("triage")
        payload = None
        if info.is_main:
            log.info("triage: %d examples, %d prompts x (1 greedy + %d samples) each", len(prepared.examples),
                     spec.triage.prompts, spec.triage.samples)
            try:
                counts, splits = triage_and_split(prepared)
                t1 = time.perf_counter()
                leak, refusal = check_leakage(splits, spec)
                timer.add("leakage", time.perf_counter() - t1)
                if refusal:  # before the cache is written: the failed job leaves no triage.pt behind
                    payload = {"error": refusal}
                else:
                    payload = {"digest": digest, "counts": counts, "splits": splits}
                    atomic_torch_save(payload, tri_path)
                    payload = {**payload, "leakage": leak}
            except ValueError as e:  # e.g. nothing left to train on after the Unknown policy
                payload = {"error": f"triage: {e}"}
        cached = broadcast_object(payload)  # the other ranks learn of a failure too, instead of waiting
        if "error" in cached:
            _discard_output(out, created_out, info)
            raise JobFailed(cached["error"])
        timer.add("triage", time.perf_counter() - t0)
    else:
        log.info("triage: reusing %s", tri_path)
        t1 = time.perf_counter()
        leak, refusal = check_leakage(cached["splits"], spec)  # every rank: deterministic, the same result
        timer.add("leakage", time.perf_counter() - t1)
        if refusal:
            raise JobFailed(refusal)
        cached = {**cached, "leakage": leak}
    tele.triage(cached["counts"])
    return cached["counts"], cached["splits"], cached["leakage"]


# -------------------------------------------------------------------------------- format stage


def _frozen_copy(model):
    import copy

    snap = copy.deepcopy(model).eval()
    for prm in snap.parameters():
        prm.requires_grad_(False)
    return snap


def run_format_stage(model, base, tok, splits, spec: api.FineTuneJobSpec, device: str, info, out: Path, tele,
                     progress: bool = True):
    """(the fact stage's starting model, FormatStageResult). Trains ``model`` on the Known training facts
    (format_stage.train), or reuses the snapshot a previous run of the same job saved in ``out``; the
    returned model is a fresh copy of ``base`` holding the snapshot's weights. Without Known training facts
    the stage is skipped (the result says why) and ``model`` is returned untouched."""
    from . import format_stage as fs
    from .checkpoints import atomic_torch_save

    known = fs.known_examples(splits)
    if not known:
        note = ("skipped: triage labelled none of the training facts HighlyKnown or MaybeKnown, so there is "
                "nothing to learn the format from; the reference is the base model")
        log.warning("format stage %s", note)
        return model, fs.FormatStageResult(ran=False, note=note)
    want = fs.digest(spec, [e.id for e in known], info.world_size)
    snap = fs.load_snapshot(out, want)
    if snap is not None:
        log.info("format stage: reusing %s (%d steps on %d Known facts)", out / fs.SNAPSHOT_FILE,
                 snap["result"]["steps"], snap["result"]["examples"])
        state, result = snap["state"], fs.FormatStageResult(**{**snap["result"], "reused": True})
    else:
        total = fs.planned_steps(len(known), spec, info.world_size)
        log.info("format stage: %d steps of SFT on %d Known training facts (lr %g)", total, len(known),
                 fs.learning_rate(spec))
        tele.plan(total)

        def on_step(step, total, loss):
            tele.step(step, step / max(total, 1), loss, 0, 0.0)

        state, result = fs.train(model, tok, splits, spec, device, info.world_size, info.rank,
                                 progress=progress and info.is_main, on_step=on_step)
        if info.local_rank == 0:
            atomic_torch_save({"digest": want, "state": state, "result": result.to_dict()}, out / fs.SNAPSHOT_FILE)
        barrier()
    fresh = _frozen_copy(base)
    fresh.load_state_dict(state)
    return fresh, result


def evaluate_references(tok, splits, base, reference, spec: api.FineTuneJobSpec, device: str, evaluate_here: bool,
                        eval_sets: Optional[dict] = None):
    """(Evaluator or None, base figures, reference figures, probe info), the same on every rank. The
    evaluator is built on the reference (its probes keep the facts the reference answers; drift is
    measured from it); the base model is evaluated with it too when the reference is another model."""
    import torch

    evaluator, base_figures, ref_figures, info = None, {}, {}, {}
    if evaluate_here:
        from .evaluation import Evaluator

        evaluator = Evaluator(tok, splits, reference, device, max_probe_size=spec.evaluation.max_probe_size,
                              abstention_text=spec.triage.abstention_text, shots=spec.triage.shots,
                              seed=spec.training.seed, sets=eval_sets, shifts=spec.evaluation.shifts,
                              shift_size=spec.evaluation.shift_probe_size)
        ref_figures = base_figures = dict(evaluator.base_figures)
        info = {"sizes": evaluator.base_details.get("sizes"), "probes": evaluator.probe_notes,
                "decoding": evaluator.decoding,
                "sets": {"reference": dict(evaluator.last_sets), "base": dict(evaluator.last_sets)},
                "shifts": {"reference": dict(evaluator.last_shifts), "base": dict(evaluator.last_shifts)}}
        if reference is not base:
            with torch.no_grad():
                base_figures = {k: (None if v is None else float(v)) for k, v in evaluator.evaluate(base).items()}
            info["sets"]["base"] = dict(evaluator.last_sets)
            info["shifts"]["base"] = dict(evaluator.last_shifts)
    base_figures, ref_figures, info = broadcast_object((base_figures, ref_figures, info))
    return evaluator, base_figures, ref_figures, info


# ------------------------------------------------------------------------------------- training


def run(config_path: Optional[Path], out: Path, device: str = "auto", *, job: Optional[api.FineTuneJob] = None,
        print_table: bool = True, progress: bool = True) -> RunResult:
    """Run one job end to end on this process (one rank of the world in the environment). A full output volume
    fails the job with what to do; every file is written atomically, so what was complete stays complete."""
    import errno

    try:
        return _run(config_path, Path(out), device, job=job, print_table=print_table, progress=progress)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from .checkpoints import CheckpointManager

        last = CheckpointManager(Path(out), 0, 0).resume_point()
        raise JobFailed(f"no space left for the output ({out}): {e.strerror} writing {e.filename or 'a file'}; "
                        f"free space or give spec.output a larger volume, then run the job again: it resumes from "
                        f"{'its checkpoint ' + last.name if last else 'the start (no complete checkpoint yet)'}",
                        before_training=False) from None


def _run(config_path: Optional[Path], out: Path, device: str, *, job: Optional[api.FineTuneJob],
         print_table: bool, progress: bool) -> RunResult:
    import torch

    from . import engine as eng

    wall0 = time.perf_counter()
    world = eng.DistInfo.from_env()  # known before the process group exists
    setup_logging(world.is_main)
    prepared = prepare(config_path, device, job)  # may raise JobFailed / InvalidManifest: nothing written
    job, spec, device, timer = prepared.job, prepared.job.spec, prepared.device, prepared.timings
    eng.prepare_accelerator(device)
    try:
        eng.build_config(spec, device, world.world_size)
    except eng.EngineConfigError as e:
        raise JobFailed(str(e)) from None

    t0 = time.perf_counter()
    info = eng.init_distributed(device)
    is_main = info.is_main
    timer.add("init_distributed", time.perf_counter() - t0)
    seed_everything(spec.training.seed)
    dev = torch.device("cuda", info.local_rank) if device == "cuda" else torch.device("cpu")

    from .checkpoints import CheckpointManager
    from .telemetry import Telemetry

    ckpt = CheckpointManager(out, info.rank, info.local_rank)
    created_out = not out.exists()
    if info.local_rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    ckpt.recover()
    barrier()
    tele = Telemetry.from_env(job, is_main=is_main)
    tele.stage("loading")

    model, tok = prepared.model.to(dev), prepared.tokenizer
    loaded = {"parameters": sum(x.numel() for x in model.parameters()), "architecture": type(model).__name__}
    adapter = spec.method.adapter
    # The frozen base: the format stage's starting weights, the reference when that stage does not run. An
    # adapter without a format stage never changes the model's own weights: the model is its own base.
    base = model if adapter is not None and not spec.format_stage.enabled else _frozen_copy(model)

    # ---------------------------------------------------------------- triage (rank 0, broadcast)
    counts, splits, leak = run_triage(prepared, out, info, tele, timer, created_out)
    leak_dropped = 0
    if leak.pairs and spec.leakage.policy == "drop":
        from .leakage import drop_leaked

        splits, leak_dropped = drop_leaked(splits, leak)
        log.warning("leakage: dropped %d leaked probe example(s)", leak_dropped)
    tele.leakage(leak.counts(leak_dropped))
    try:
        eval_sets, set_leakage = check_eval_sets(prepared.eval_sets, splits.train, spec)
    except JobFailed:  # refused before training: like a leaked probe, leaves no output behind
        _discard_output(out, created_out, info)
        raise
    if not getattr(splits, "train", None):
        raise JobFailed("no training examples left after triage (all dropped?); "
                        "use triage.unknownPolicy keep or abstain, or add data", before_training=True)
    plan = None
    if is_main:
        from . import plan as plan_mod

        plan = plan_mod.build(prepared, splits, leak, dropped=leak_dropped)
        log.info("plan before training:\n%s", plan_mod.describe(plan))
        tele.plan_summary(plan_mod.status(plan))
    if spec.plan_only:
        return _finish_plan_only(job, prepared, counts, splits, leak, leak_dropped, plan, out, tele, timer, wall0)

    # ------------------------------------------------------- format stage (every rank trains it)
    fmt_res = None
    reference = base  # what every figure is measured against: the format-stage snapshot, or the base model
    if spec.format_stage.enabled:
        tele.stage("format")
        t0 = time.perf_counter()
        model, fmt_res = run_format_stage(model, base, tok, splits, spec, device, info, out, tele, progress=progress)
        # an adapter starts at zero, so the model itself is the reference until the adapter is injected
        reference = (model if adapter is not None else _frozen_copy(model)) if fmt_res.ran else base
        timer.add("format_stage", time.perf_counter() - t0)
    # The loaded model: the fact stage trains `model`, which is it only when no format stage ran. Dropping
    # this reference frees a whole copy of the weights otherwise (one GB for Gemma-3-270M in fp32).
    prepared.model = None

    # ------------------------------------------------------- reference and base evaluations
    t0 = time.perf_counter()
    all_eval = spec.deepspeed.zero_stage >= 3  # parameters sharded: every rank takes part in evaluations
    tele.stage("evaluating")
    evaluator, base_figures, ref_figures, eval_info = evaluate_references(
        tok, splits, base, reference, spec, str(dev), evaluate_here=is_main or all_eval, eval_sets=eval_sets)
    tele.figures(base_figures, "base")
    tele.figures(ref_figures, "reference")  # always exported: alerts compare the tuned model with it
    for model_name in ("base", "reference"):
        tele.sets(eval_info.get("sets", {}).get(model_name) or {}, model_name)
        tele.shifts(eval_info.get("shifts", {}).get(model_name) or {}, model_name)
    if reference is not base:
        if is_main:
            log.info("format stage: %s", _eval_line(fmt_res.steps, ref_figures, base_figures))
    timer.add("base_evaluation", time.perf_counter() - t0)

    # ------------------------------------------------------- fact stage (the method's own training)
    from .fact_stage import FactStage, teacher_plan

    base, adapter_teacher = teacher_plan(spec, model, base, reference)
    stage = FactStage(prepared=prepared, model=model, base=base, reference=reference,
                      adapter_teacher=adapter_teacher, tok=tok, splits=splits, evaluator=evaluator,
                      ref_figures=ref_figures, eval_info=eval_info, device=device, info=info, out=out, tele=tele,
                      timer=timer, ckpt=ckpt, all_eval=all_eval)
    del model, base, reference  # the stage owns the trained model, the teacher and the reference from here on
    stage.train(progress)
    frozen_check = stage.deliver("format-stage" if fmt_res and fmt_res.ran else "base")

    report = None
    if is_main:
        tele.stage("done")
        timer.add("total", time.perf_counter() - wall0)
        report = build_report(prepared, loaded, counts, splits, base_figures, stage, frozen_check, timer, out,
                              fmt_res=fmt_res, ref_figures=ref_figures, eval_info=eval_info,
                              leakage={**spec.leakage.wire(), **leak.to_dict(leak_dropped),
                                       **({"sets": set_leakage} if set_leakage else {})}, plan=plan)
        from . import report as rep

        try:
            plots = rep.plot(out, base_figures, stage.st.history, stage.st.train_loss,
                             reference=ref_figures if fmt_res and fmt_res.ran else None,
                             format_loss=fmt_res.train_loss if fmt_res else None)
        except Exception as e:  # plots are a convenience: never fail a finished run on them
            log.warning("plots failed: %s", e)
            plots = []
        report["outputs"]["plots"] = plots
        rep.write_report(out, report)
        if print_table:
            final = report["final"]
            print("\n" + rep.table(base_figures, final["figures"], tuned_label=f"step {final['step']}",
                                    reference=ref_figures if fmt_res and fmt_res.ran else None))
            print(_summary_lines(report))
    barrier()
    return RunResult(report=report or {}, out=out)


def _finish_plan_only(job, prepared: Prepared, counts, splits, leak, leak_dropped: int, plan: Optional[dict], out: Path,
                      tele, timer: Timer, wall0: float) -> RunResult:
    """spec.planOnly: report.json with the plan and what it was made from; no model, no checkpoint."""
    report = None
    if plan is not None:  # rank 0
        from . import report as rep

        timer.add("total", time.perf_counter() - wall0)
        report = {"job": {"name": job.metadata.name, "namespace": job.metadata.namespace}, "plan_only": True,
                  "plan": plan, "triage": {"counts": counts, "settings": job.spec.triage.wire()},
                  "splits": _split_sizes(splits), "leakage": {**job.spec.leakage.wire(), **leak.to_dict(leak_dropped)},
                  "device": prepared.device, "timings": timer.phases, "outputs": {"report": str(out / "report.json")},
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rep.write_report(out, report)
        tele.stage("done")
        log.info("planOnly: nothing trained; plan in %s", out / "report.json")
    barrier()
    return RunResult(report=report or {}, out=out)


def _eval_line(step: int, figs: dict, base: dict) -> str:
    parts = []
    for f in ("known_accuracy", "hallucination_rate", "new_fact_accuracy", "fabrication_rate", "drift_kl", "eval_loss"):
        v = figs.get(f)
        if v is not None:
            parts.append(f"{f}={v:.3f}")
    return f"[eval step {step}] " + " ".join(parts)


def _summary_lines(report: dict) -> str:
    lines = []
    thr = report.get("throughput", {})
    lines.append(f"\nsteps {thr.get('steps')}  tokens/s {thr.get('tokens_per_second')}  "
                 f"step time {thr.get('step_seconds_mean')} s  wall {report['timings'].get('total')} s")
    if report.get("best"):
        b = report["best"]
        lines.append(f"best model: step {b['step']} (by {b.get('metric')}"
                     f"{'' if b.get('within_budget', True) else ', outside the guardrail budget'}) -> "
                     f"{report['outputs']['best_model']}")
    else:
        lines.append(f"best model: the base model (no evaluation within the guardrail budget) -> "
                     f"{report['outputs']['best_model']}")
    if report["outputs"].get("best_adapter"):
        lines.append(f"best adapter (LoRA, {report['method']['adapter']['trainable_parameters']:,} parameters; "
                     f"best-model is it merged) -> {report['outputs']['best_adapter']}")
    g = report.get("guardrail", {})
    lines.append(f"guardrail: {g.get('outcome')}")
    for name, fin in ((report.get("sets") or {}).get("final") or {}).items():
        ref = report["sets"]["reference"].get(name) or {}
        lines.append(f"evaluation set {name}: accuracy {_pct(fin.get('accuracy'))} (reference "
                     f"{_pct(ref.get('accuracy'))}, base {_pct(report['sets']['base'].get(name, {}).get('accuracy'))}), "
                     f"abstention {_pct(fin.get('abstention_rate'))}, {fin.get('size')} questions")
    for shift, fin in ((report.get("shifts") or {}).get("final") or {}).items():
        ref = (report["shifts"]["reference"].get(shift) or {}).get("known") or {}
        k, n = fin.get("known") or {}, fin.get("new") or {}
        lines.append(f"shift {shift}: known {_pct(k.get('accuracy'))} asked shifted, gap {_pct(k.get('gap'))} "
                     f"(reference {_pct(ref.get('gap'))}); new facts {_pct(n.get('accuracy'))}, gap {_pct(n.get('gap'))}")
    if report.get("frozen_weights"):
        fw = report["frozen_weights"]
        lines.append(f"frozen weights identical to base: {fw['identical']} ({fw['checked_tensors']} tensors)")
    if report.get("stopped_early"):
        lines.append(f"stopped early: {report['stopped_early']}")
    lines.append(f"report: {report['outputs']['report']}")
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _split_sizes(splits) -> dict:
    out = {}
    for k in ("train", "known_probe", "new_facts", "unknown_probe", "drift_prompts"):
        v = getattr(splits, k, None)
        if v is not None:
            out[k] = len(v)
    return out


def build_report(prepared: Prepared, loaded: dict, counts, splits, base_figures, stage, frozen_check, timer: Timer,
                 out: Path, fmt_res=None, ref_figures: Optional[dict] = None, eval_info: Optional[dict] = None,
                 leakage: Optional[dict] = None, plan: Optional[dict] = None) -> dict:
    """report.json of a finished run; ``stage`` is its fact_stage.FactStage."""
    from . import engine as eng
    from .checkpoints import BEST_ADAPTER, BEST_MODEL, CKPT_DIR
    from .report import forgetting

    job, st, objective, ds_cfg, adapter_info = prepared.job, stage.st, stage.objective, stage.ds_cfg, stage.adapter_info
    final, step_times = stage.final(), stage.step_times
    ref_figures = ref_figures if ref_figures is not None else base_figures
    formatted = bool(fmt_res and fmt_res.ran)

    spec = job.spec
    method = {"type": spec.method.type}
    if spec.method.type == "self-distill":
        method["selfDistill"] = spec.method.distill().wire()
        method["teacher_view_batches"] = objective.teacher_view_batches
        if objective.cache is not None:
            method["teacher_cache"] = {"k": objective.cache.k, "hits": objective.cache.hits,
                                       "misses": objective.cache.misses}
    if spec.method.type == "freeze":
        method["freeze"] = spec.method.freeze.wire()
    if adapter_info is not None:
        method["adapter"] = adapter_info
        method["teacher_is_adapter_off"] = objective.adapter_teacher
    breaches = st.breaches
    if not breaches:
        outcome = "within budget"
    else:
        last = breaches[-1]
        outcome = f"breached at step {last['step']} ({'; '.join(last['breaches'])}); action {last['action']}"
    steady = step_times[1:] if len(step_times) > 1 else step_times
    return {
        "job": {"name": job.metadata.name, "namespace": job.metadata.namespace},
        "method": method,
        "model": {"uri": spec.model.uri, "path": str(prepared.model_path), **loaded},  # as loaded: no adapter
        "dataset": {"train": spec.datasets.train, "format": spec.datasets.format, "examples": len(prepared.examples),
                    "duplicates_dropped": getattr(prepared.examples, "duplicates", 0)},
        "triage": {"counts": counts, "settings": spec.triage.wire()},
        "splits": _split_sizes(splits),
        # probes that duplicate training questions (policy, threshold, counts, the first pairs)
        "leakage": leakage,
        "plan": plan,  # what the data and the evidence advised before training (plan.py)
        # the stages in the order they ran; figures of the model each one produced
        "stages": [
            {"name": "triage", "seconds": timer.phases.get("triage"), "counts": counts},
            {"name": "format", **(fmt_res.to_dict() if fmt_res else {"ran": False, "note": "formatStage.enabled is false"}),
             "figures": ref_figures if formatted else None},
            {"name": "train", "method": spec.method.type, "steps": st.step, "figures": final["figures"]},
        ],
        "base": base_figures,
        # what drops and drift are measured against: the format-stage snapshot when that stage ran
        "reference": {"model": "format-stage" if formatted else "base", "figures": ref_figures},
        "forgetting": forgetting(ref_figures, st.history, final["figures"]),
        # probe sizes after the reference model's filter, and how they were made
        # and the decoding settings, the same for every model evaluated
        "evaluation": {k: v for k, v in (eval_info or {}).items() if k not in ("sets", "shifts")},
        # spec.evaluation.sets: accuracy, abstention and wrong answers per set (the history has every evaluation's)
        "sets": ({**(eval_info or {})["sets"], "final": final.get("sets")}
                 if ((eval_info or {}).get("sets") or {}).get("reference") else None),
        # spec.evaluation.shifts: accuracy asked shifted and the robustness gap per shift and probe (history: every
        # evaluation's)
        "shifts": ({**(eval_info or {})["shifts"], "final": final.get("shifts")}
                   if ((eval_info or {}).get("shifts") or {}).get("reference") else None),
        "final": final,
        "best": ({"step": st.best["step"], "figures": st.best["figures"], "metric": st.best.get("metric"),
                  "within_budget": st.best.get("within_budget", True)} if st.best else None),
        "history": st.history,
        "train_loss": st.train_loss,
        "throughput": {
            "steps": st.step, "total_steps": stage.total_steps, "tokens": st.tokens,
            "tokens_per_second": round(st.tokens / st.train_seconds, 1) if st.train_seconds else None,
            "train_seconds": round(st.train_seconds, 2),
            "step_seconds_mean": round(sum(steady) / len(steady), 4) if steady else None,
        },
        "guardrail": {"budgets": stage.guard.spec.wire(), "breaches": breaches, "outcome": outcome},
        "early_stopping": spec.training.early_stopping.wire(),
        "stopped_early": st.stopped,
        "frozen_weights": frozen_check,
        "deepspeed": {"zero_stage": ds_cfg.get("zero_optimization", {}).get("stage"),
                      "precision": eng.config_precision(ds_cfg), "world_size": stage.world,
                      "micro_batch": ds_cfg.get("train_micro_batch_size_per_gpu"),
                      "gradient_accumulation": ds_cfg.get("gradient_accumulation_steps")},
        "device": prepared.device,
        "timings": timer.phases,
        "resumed_from": stage.resumed_from,
        # best_model is always a full Hugging Face model (with an adapter: merged); best_adapter the adapter alone
        "outputs": {"report": str(out / "report.json"), "best_model": str(out / BEST_MODEL),
                    "best_adapter": str(out / BEST_ADAPTER) if adapter_info is not None else None,
                    "checkpoints": str(out / CKPT_DIR)},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
