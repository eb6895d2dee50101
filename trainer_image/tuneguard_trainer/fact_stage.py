"""The fact stage: the method's own training on the mixed data, after the format stage.

``FactStage(...)`` sets the method up (what freeze trains, a LoRA adapter, the self-distill teacher, the
DeepSpeed engine) and resumes from the latest checkpoint; ``train()`` runs the optimizer steps, evaluating
every ``evaluation.intervalSteps`` against the reference, applying guardrails and early stopping, saving
checkpoints and the best model; ``deliver()`` makes sure a best model exists and checks frozen tensors.
Every rank runs it; decisions are made on rank 0 (``decide_evaluation``) and broadcast. Its state between
runs is ``TrainState``, saved in every checkpoint.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Optional

from tuneguard import api

from . import engine as eng
from .loop import _dist, _eval_line, barrier, broadcast_object

log = logging.getLogger("tuneguard.trainer")


class TrainState:
    """Everything a resumed run needs besides the engine's own state."""

    def __init__(self):
        self.step = 0
        self.micro = 0
        self.tokens = 0
        self.train_seconds = 0.0
        self.history: list[dict] = []
        self.train_loss: list[dict] = []
        self.best: Optional[dict] = None  # {step, figures, metric}
        self.no_improve = 0
        self.best_monitored: Optional[float] = None
        self.breaches: list[dict] = []
        self.stopped: Optional[str] = None  # why training ended early

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        st = cls()
        st.__dict__.update({k: v for k, v in d.items() if k in st.__dict__})
        return st


def _monitor(es: api.EarlyStoppingSpec, figures: dict) -> Optional[float]:
    """The early-stopping figure as 'higher is better' (eval_loss negated)."""
    v = figures.get(es.metric)
    if v is None:
        return None
    return -float(v) if es.metric == "eval_loss" else float(v)


def decide_evaluation(st: TrainState, figures: dict, breaches: list, es: api.EarlyStoppingSpec, action: str) -> dict:
    """What one evaluation decides (pure; rank 0 calls it and broadcasts the answer): whether it is the new
    best model, whether training stops (early stopping, or a guardrail's stop or rollback) and why, and the
    early-stopping counters after it."""
    within = not breaches
    monitored = _monitor(es, figures)
    # Candidates for the delivered model: evaluations within budget; under action warn (breaches accepted)
    # every evaluation, the report saying whether the best one was within budget.
    candidate = within or action == "warn"
    new_best = candidate and monitored is not None and (
        st.best is None or st.best.get("monitored") is None or monitored > st.best["monitored"])
    best_monitored, no_improve = st.best_monitored, st.no_improve
    if monitored is not None:
        if best_monitored is None or monitored > best_monitored:
            best_monitored, no_improve = monitored, 0
        else:
            no_improve += 1
    stop, why, rollback = False, None, False
    if es.enabled and no_improve >= es.patience:
        stop, why = True, f"early stopping: {es.metric} did not improve for {es.patience} evaluations"
    if breaches and action in ("stop", "rollback"):
        stop, why = True, f"guardrail {action}: " + "; ".join(str(b) for b in breaches)
        rollback = action == "rollback"
    return {"new_best": new_best, "within": within, "monitored": monitored, "stop": stop, "why": why,
            "rollback": rollback, "no_improve": no_improve, "best_monitored": best_monitored}


def teacher_plan(spec: api.FineTuneJobSpec, model, base, reference) -> tuple[object, bool]:
    """(base, adapter_teacher): the base model, or None where the fact stage no longer needs it (the caller
    drops its own reference, so it is freed before the engine allocates); and whether the self-distill
    teacher is the student with its adapter off (an adapter on the teacher's own weights)."""
    distill = spec.method.type == "self-distill" and spec.method.distill().lambda_ > 0
    teacher_is_base = spec.method.type == "self-distill" and spec.method.distill().teacher == "base"
    adapter_teacher = distill and reference is model and (not teacher_is_base or base is model)
    if reference is not base and not (teacher_is_base and not adapter_teacher):
        base = None  # the teacher, the rollback target and the fallback are the reference
    return base, adapter_teacher


class FactStage:
    """One job's fact stage on this rank. ``base`` and ``reference`` are the frozen base model (None where
    ``teacher_plan`` dropped it) and the reference (the format-stage snapshot, or the base itself); either
    may be the live ``model`` when an adapter trains on top of it."""

    def __init__(self, *, prepared, model, base, reference, adapter_teacher: bool, tok, splits, evaluator,
                 ref_figures: dict, eval_info: Optional[dict], device: str, info, out, tele, timer, ckpt,
                 all_eval: bool):
        import torch

        from . import freezing
        from .guardrails import GuardrailSource
        from .methods import Objective
        from .prompts import encode_for_training

        spec = prepared.job.spec
        self.spec, self.job, self.tok, self.out, self.info = spec, prepared.job, tok, out, info
        self.tele, self.timer, self.ckpt, self.evaluator = tele, timer, ckpt, evaluator
        self.ref_figures, self.all_eval = ref_figures, all_eval
        self.is_main = info.is_main
        self.adapter = spec.method.adapter
        self.freeze_plan = prepared.freeze_plan

        distill = spec.method.type == "self-distill" and spec.method.distill().lambda_ > 0
        teacher_is_base = spec.method.type == "self-distill" and spec.method.distill().teacher == "base"

        # ------------------------------------------------------------------ what trains
        model.train()
        self.initial_adapter = self.adapter_info = None
        if self.freeze_plan is not None:
            freezing.apply(model, self.freeze_plan)
        elif self.adapter is not None:
            from . import adapters

            # peft injects the adapter into the model's own modules: from here on `reference` (when it is the
            # model) would include it, so the reference is the adapter's initial state instead.
            model = adapters.wrap(model, self.adapter, prepared.adapter_targets)
            self.initial_adapter = adapters.adapter_state(model)
            self.adapter_info = adapters.summary(model, self.adapter, prepared.adapter_targets)
            log.info("adapter: LoRA rank %d on %d modules, %d trainable parameters (%.2f%% of the model's)",
                     self.adapter.rank, self.adapter_info["modules"], self.adapter_info["trainable_parameters"],
                     100 * self.adapter_info["trainable_share"])
            if evaluator is not None:
                evaluator.release_parameter_copy()
            reference = None if reference is model.get_base_model() else reference
            base = None if base is model.get_base_model() else base
        else:
            for prm in model.parameters():
                prm.requires_grad_(True)
        self.reference = reference

        # ------------------------------------------------------------------ data
        self.encoded = encode_for_training(tok, splits.train, spec.training.max_seq_length)
        self.teacher_encoded = None  # the self-distill teacher's own view of each example (teacherPrompt few-shot)
        if spec.method.type == "self-distill" and spec.method.distill().teacher_prompt == "few-shot":
            from .prompts import FewShotExemplars

            exemplars = FewShotExemplars(splits.train, spec.triage.shots, spec.training.seed)  # the evaluator's
            # the teacher does no backward pass: its view may exceed maxSeqLength (truncation keeps the answer)
            self.teacher_encoded = encode_for_training(tok, splits.train, max(4 * spec.training.max_seq_length, 1024),
                                                       shots=exemplars.for_example)
        self.world = info.world_size
        from torch.utils.data import DistributedSampler

        self.sampler = DistributedSampler(range(len(self.encoded)), num_replicas=self.world, rank=info.rank,
                                          shuffle=True, seed=spec.training.seed, drop_last=False)
        self.micro_per_epoch = math.ceil(len(self.sampler) / spec.training.batch_size)
        if spec.training.max_steps:
            self.total_steps = int(spec.training.max_steps)
        else:
            self.total_steps = max(1, math.ceil(spec.training.epochs * self.micro_per_epoch
                                                / spec.training.gradient_accumulation))

        # ------------------------------------------------------------------ engine and objective
        t0 = time.perf_counter()
        self.engine, self.ds_cfg = eng.create_engine(model, spec, device, self.world, self.total_steps)
        timer.add("engine_init", time.perf_counter() - t0)
        train_dtype = eng.dtype_of(eng.config_precision(self.ds_cfg))
        teacher = None
        if distill and not adapter_teacher:
            import copy

            source = base if teacher_is_base else reference
            teacher = source if train_dtype == torch.float32 else copy.deepcopy(source).to(train_dtype)
        self.objective = Objective.from_spec(spec.method, teacher=teacher, adapter_teacher=adapter_teacher)
        self.frozen_before = None
        if self.freeze_plan is not None:
            self.frozen_before = freezing.digests(self.engine.module, self.freeze_plan.frozen)

        # ------------------------------------------------------------------ resume
        self.st = TrainState()
        self.resumed_from = None
        latest = broadcast_object(ckpt.resume_point() if self.is_main else None)  # rank 0 decides: the same on all
        if latest is not None:
            t0 = time.perf_counter()
            cs = ckpt.load(self.engine, latest, trainable_only=self.adapter is not None)
            self.st = TrainState.from_dict(cs.get("train_state", {}))
            self.resumed_from = {"checkpoint": str(latest), "step": self.st.step}
            log.info("resumed from %s at step %d", latest, self.st.step)
            timer.add("resume", time.perf_counter() - t0)

        self.guard = GuardrailSource(spec.guardrails, prepared.config_path)
        self.es = spec.training.early_stopping
        tele.plan(self.total_steps)
        if self.resumed_from:
            tele.position(self.st.step, self.st.micro / max(self.micro_per_epoch, 1))
        tele.stage("training")

        self.set_figures: dict = {}  # the latest evaluation's figures on spec.evaluation.sets
        self.shift_figures: dict = {}  # and on spec.evaluation.shifts
        self.ref_shifts = (eval_info or {}).get("shifts", {}).get("reference") or {}
        self.step_times: list[float] = []
        self.rolled_back = False

    # ---------------------------------------------------------------------- one evaluation
    def evaluate(self) -> dict:
        """The tuned model's figures, on every rank (rank 0 evaluates unless parameters are sharded)."""
        import torch

        tq = time.perf_counter()
        module = self.engine.module
        module.eval()
        figs, sets, shifts = None, None, None
        if self.evaluator is not None:
            with torch.no_grad():
                figs = {k: (None if v is None else float(v)) for k, v in self.evaluator.evaluate(module).items()}
            sets, shifts = dict(self.evaluator.last_sets), dict(self.evaluator.last_shifts)
        module.train()
        figs, sets, shifts = (figs, sets, shifts) if self.all_eval else broadcast_object((figs, sets, shifts))
        self.set_figures = sets or {}
        self.shift_figures = shifts or {}
        self.tele.sets(self.set_figures, "tuned")
        self.tele.shifts(self.shift_figures, "tuned")
        self.timer.add("evaluation", time.perf_counter() - tq)
        return figs

    def record(self, figs: dict) -> tuple[bool, bool, bool]:
        """Record an evaluation; returns (is_new_best, stop, rollback). Decided on rank 0, broadcast."""
        from .guardrails import check

        st, decision = self.st, None
        if self.is_main:
            gspec = self.guard.current()
            breaches = check(figs, self.ref_figures, gspec, self.shift_figures, self.ref_shifts)
            rec = {"step": st.step, "epoch": round(st.micro / max(self.micro_per_epoch, 1), 4), "figures": figs,
                   "train_loss": st.train_loss[-1]["loss"] if st.train_loss else None,
                   "guardrail_breaches": [str(b) for b in breaches]}
            if self.set_figures:
                rec["sets"] = dict(self.set_figures)
            if self.shift_figures:
                rec["shifts"] = dict(self.shift_figures)
            if breaches:
                for b in breaches:
                    self.tele.breach(b.guardrail)
                msg = "; ".join(str(b) for b in breaches)
                st.breaches.append({"step": st.step, "action": gspec.action, "breaches": [str(b) for b in breaches]})
                log.warning("guardrail breached at step %d: %s (action: %s)", st.step, msg, gspec.action)
                self.tele.guardrail(f"breached: {gspec.action} at step {st.step} ({msg})")
            decision = {"rec": rec, **decide_evaluation(st, figs, breaches, self.es, gspec.action)}
        decision = broadcast_object(decision)
        st.history.append(decision["rec"])
        st.no_improve, st.best_monitored = decision["no_improve"], decision["best_monitored"]
        if decision["new_best"]:
            st.best = {"step": st.step, "figures": figs, "monitored": decision["monitored"], "metric": self.es.metric,
                       "within_budget": decision["within"]}
        if decision["stop"]:
            st.stopped = decision["why"]
        return decision["new_best"], decision["stop"], decision["rollback"]

    # ---------------------------------------------------------------------- what is saved
    def checkpoint(self, keep_best: bool) -> None:
        tq = time.perf_counter()
        st = self.st
        self.tele.stage("saving")
        meta = {"step": st.step, "micro": st.micro, "epoch": st.micro / max(self.micro_per_epoch, 1),
                "history": st.history, "best": st.best, "job": self.job.metadata.name}
        self.ckpt.save(self.engine, st.step, {"train_state": st.to_dict()}, meta, keep_best=keep_best,
                       trainable_only=self.adapter is not None)
        self.tele.stage("training")
        self.timer.add("checkpoint", time.perf_counter() - tq)

    def save_best(self) -> None:
        from .checkpoints import BEST_ADAPTER

        tq = time.perf_counter()
        if self.is_main:
            path = self.ckpt.save_best_model(self.engine.module, self.tok)
            self.tele.best(self.st.best["step"], str(path), self.st.best["figures"],
                           adapter_path=str(self.out / BEST_ADAPTER) if self.adapter is not None else None)
        barrier()
        self.timer.add("save_best_model", time.perf_counter() - tq)

    def restore_reference(self, module) -> None:
        """Rollback target when no evaluation stayed within budget: the reference's function."""
        import torch

        with torch.no_grad():
            if self.initial_adapter is not None:
                from . import adapters

                adapters.load_adapter_state(module, self.initial_adapter)
            else:
                module.load_state_dict(self.reference.state_dict())

    def rollback(self) -> None:
        """Back to the best evaluation within budget, or to the reference when there is none."""
        barrier()
        module = self.engine.module
        if self.st.best is not None and self.ckpt.load_best_weights(module):
            log.warning("rollback: restored the best model of step %d", self.st.best["step"])
        else:
            self.restore_reference(module)
            log.warning("rollback: no evaluation was within budget; restored the reference model")
            self.st.best = None
        self.rolled_back = True

    # ---------------------------------------------------------------------- the loop
    def train(self, progress: bool) -> None:
        import torch
        from tqdm.auto import tqdm

        from .checkpoints import debug_kill
        from .methods import TEACHER_VIEW, collate

        spec, st, engine, tele, tok = self.spec, self.st, self.engine, self.tele, self.tok
        bs, ga = spec.training.batch_size, spec.training.gradient_accumulation
        total_steps, micro_per_epoch = self.total_steps, self.micro_per_epoch
        bar = tqdm(total=total_steps, initial=st.step, disable=not (self.is_main and progress), unit="step",
                   dynamic_ncols=True, desc=f"{spec.method.type}", file=sys.stderr)
        interval = spec.evaluation.interval_steps
        ck_interval = spec.training.checkpoint_interval
        window = {"loss": 0.0, "n": 0, "tokens": 0, "t": time.perf_counter()}
        stop = st.stopped is not None or st.step >= total_steps
        t_train0 = time.perf_counter()
        while not stop:
            epoch, offset = divmod(st.micro, micro_per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(iter(self.sampler))
            batches = [order[i:i + bs] for i in range(0, len(order), bs)]
            for rows in batches[offset:]:
                batch = collate([self.encoded[i] for i in rows], tok.pad_token_id)
                batch["index"] = torch.tensor(rows, dtype=torch.long)
                if self.teacher_encoded is not None:
                    view = collate([self.teacher_encoded[i] for i in rows], tok.pad_token_id)
                    batch.update({TEACHER_VIEW + k: v for k, v in view.items()})
                batch = {k: v.to(engine.device) for k, v in batch.items()}
                res = self.objective(engine, batch)
                engine.backward(res.loss)
                engine.step()
                st.micro += 1
                window["loss"] += float(res.loss.detach())
                window["n"] += 1
                window["tokens"] += int(batch["attention_mask"].sum())
                if st.micro % ga:
                    continue
                # ------------------------------------------------------- one optimizer step done
                st.step += 1
                stats = torch.tensor([window["loss"], window["n"], window["tokens"]], dtype=torch.float64)
                dist = _dist()
                if dist is not None and self.world > 1:
                    dist.all_reduce(stats)
                now = time.perf_counter()
                seconds = now - window["t"]
                self.step_times.append(seconds)
                st.train_seconds += seconds
                loss = float(stats[0] / max(stats[1], 1))
                toks = int(stats[2])
                st.tokens += toks
                tps = toks / seconds if seconds > 0 else 0.0
                st.train_loss.append({"step": st.step, "loss": round(loss, 6), "lr": eng.current_lr(engine)})
                tele.step(st.step, st.micro / micro_per_epoch, loss, toks, tps)
                bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}", refresh=False)
                bar.update(1)
                last = st.step >= total_steps
                evaluated = new_best = False
                if st.step % interval == 0 or last:
                    tele.stage("evaluating")
                    figs = self.evaluate()
                    new_best, stop_now, rollback = self.record(figs)
                    evaluated = True
                    tele.figures(figs, "tuned")
                    if self.is_main:
                        bar.write(_eval_line(st.step, figs, self.ref_figures))
                    if new_best:
                        self.save_best()
                    if rollback:
                        self.rollback()
                    stop = stop_now or last
                    tele.stage("training")
                if (ck_interval and st.step % ck_interval == 0) or (not ck_interval and evaluated) or (stop and not last):
                    self.checkpoint(keep_best=evaluated and new_best)
                elif evaluated and new_best:
                    self.ckpt.mark_best(st.step)
                window = {"loss": 0.0, "n": 0, "tokens": 0, "t": time.perf_counter()}
                debug_kill("TUNEGUARD_DEBUG_KILL_AT_STEP", st.step)
                if stop:
                    break
        bar.close()
        self.timer.add("train_loop", time.perf_counter() - t_train0)

    # ---------------------------------------------------------------------- the end
    def deliver(self, reference_name: str) -> Optional[dict]:
        """A best model exists after this (the reference's, when no evaluation stayed within budget); returns
        the frozen-tensor check of freeze (None for other methods)."""
        from . import freezing

        if not self.st.history:  # resumed at the last step: evaluate the restored model
            self.record(self.evaluate())
        if self.st.best is None and self.is_main and not (self.out / "best-model").exists():
            log.warning("no evaluation stayed within the guardrail budgets; best-model is the %s model",
                        reference_name)
            if self.adapter is not None:  # the end of training: the live adapter may be reset
                self.restore_reference(self.engine.module)
            self.ckpt.save_best_model(self.engine.module if self.adapter is not None else self.reference, self.tok)
        barrier()
        if self.frozen_before is None:
            return None
        frozen_check = freezing.verify_frozen(self.engine.module, self.frozen_before)
        frozen_check.update(self.freeze_plan.summary(self.engine.module))
        if not frozen_check["identical"]:
            log.error("frozen tensors changed: %s", frozen_check["changed"])
        return frozen_check

    def final(self) -> dict:
        """The delivered model's evaluation: the last one, or after a rollback the best within budget (or the
        reference's figures)."""
        st = self.st
        if not self.rolled_back:
            return dict(st.history[-1])
        if st.best:
            return {"step": st.best["step"], "figures": st.best["figures"], "rolled_back_from": st.step}
        return {"step": 0, "figures": self.ref_figures, "rolled_back_from": st.step}
