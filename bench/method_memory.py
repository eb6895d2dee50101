"""Peak memory of a whole `tuneguard run` per method: full sft and self-distill against their LoRA versions.

    PYTHONPATH=.:operator:trainer_image python bench/method_memory.py --device cpu

Each contender is the product's own CLI (`tuneguard run`) in a child process of its own, one after the other,
on the same job (the bundled SmolLM2-135M on bundled://facts-small, the format stage on, a few fact-stage
steps with one evaluation); the figure is the child's peak resident set size (``os.wait4``'s ru_maxrss), so
it counts everything a real run holds: the student, its gradients and optimizer state, the reference and
teacher copies, the evaluator. The triage and the format-stage snapshot are computed once by a warm-up run
and handed to every contender (the loop reuses both by their digests), so the peaks are the fact stage's.

Why a process per contender: peak RSS is a process's high-water mark, so contenders sharing one process
would all report the largest. Step times come from each run's report (separate processes on a shared
machine: bench/trainer_speed.py compares step times interleaved in one process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from bench.common import REPO, machine_info, markdown_table, model_bench_parser, out_dir, ratio, write_result

LORA = {"rank": 16, "alpha": 32, "targets": "all-linear"}
DISTILL = {"lambda": 1.0, "temperature": 0.5}
CONTENDERS = {
    "sft": {"type": "sft"},
    "self-distill": {"type": "self-distill", "selfDistill": DISTILL},
    "lora-sft": {"type": "sft", "adapter": LORA},
    "lora-self-distill": {"type": "self-distill", "selfDistill": DISTILL, "adapter": LORA},
    # the same, but the teacher is the base model: a frozen copy of its own (the adapter sits on the snapshot)
    "lora-self-distill-copy-teacher": {"type": "self-distill", "selfDistill": {**DISTILL, "teacher": "base"},
                                       "adapter": LORA},
}
SHARED = ("triage.pt", "format-stage.pt")  # computed once, reused by every contender (digest-keyed)


def manifest(method: dict, s: dict) -> dict:
    return {"apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "memory"},
            "spec": {"model": {"uri": s["model"]},
                     "datasets": {"train": "bundled://facts-small", "holdoutFraction": 0.5},
                     "method": method,
                     "triage": {"prompts": 1, "shots": 2, "samples": 2},
                     "formatStage": {"maxSteps": 2},
                     "training": {"maxSteps": s["steps"], "batchSize": 8, "learningRate": 1e-4, "maxSeqLength": 128,
                                  "checkpointInterval": 10**6},
                     "deepspeed": {"zeroStage": 0, "precision": "fp32" if s["device"] == "cpu" else "bf16"},
                     "evaluation": {"intervalSteps": s["steps"], "maxProbeSize": s["probe"]},
                     "guardrails": {"action": "warn"},
                     "resources": {"workers": 1, "gpusPerWorker": 0 if s["device"] == "cpu" else 1}}}


def run_child(name: str, method: dict, s: dict, work: Path, seed_from: Path | None, log) -> dict:
    """One `tuneguard run` in its own process; its peak RSS, wall time and report figures."""
    d = work / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    job = d / "job.yaml"
    job.write_text(yaml.safe_dump(manifest(method, s), sort_keys=False))
    out = d / "out"
    if seed_from is not None:
        out.mkdir()
        for f in SHARED:
            shutil.copy2(seed_from / f, out / f)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "operator"), str(REPO / "trainer_image")]))
    cmd = [sys.executable, "-m", "tuneguard.cli", "run", str(job), "--out", str(out), "--device", s["device"]]
    t0 = time.time()
    with open(d / "log.txt", "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: tuneguard run exited {proc.returncode}; see {d / 'log.txt'}")
    rep = json.loads((out / "report.json").read_text())
    adapter = rep["method"].get("adapter") or {}
    row = {"peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 1),
           "step_s": rep["throughput"]["step_seconds_mean"], "steps": rep["throughput"]["steps"],
           "trainable_parameters": adapter.get("trainable_parameters", rep["model"]["parameters"]),
           "teacher_is_adapter_off": rep["method"].get("teacher_is_adapter_off"),
           "known_accuracy": rep["final"]["figures"].get("known_accuracy"),
           "drift_kl": rep["final"]["figures"].get("drift_kl"),
           "reused": [st["name"] for st in rep["stages"] if st.get("reused")] or None}
    log(f"{name}: peak RSS {row['peak_rss_mb']:.0f} MB, step {row['step_s']} s, wall {row['wall_s']:.0f} s")
    return row


def markdown(r: dict) -> str:
    s, rows = r["settings"], r["contenders"]
    table = [[n, f"{v['peak_rss_mb']:,.0f}", f"{r['ratios'][n]['rss_vs_full']:.2f}" if r['ratios'][n]['rss_vs_full'] else "-",
              f"{v['step_s']:.2f}", f"{v['trainable_parameters']:,}", {True: "adapter off", False: "copy", None: "-"}[
                  v.get("teacher_is_adapter_off") if "self-distill" in n else None]]
             for n, v in rows.items()]
    return "\n".join([
        f"# Peak memory per method: {s['model']} on {r['machine']['device']}", "",
        f"One `tuneguard run` per contender, each in a process of its own, one after the other (bench/method_memory.py"
        f"'s docstring says why): bundled://facts-small, format stage (shared snapshot), {s['steps']} fact-stage "
        f"steps of batch 8, one evaluation on probes of up to {s['probe']} facts, {s['precision']}. Peak RSS is the "
        f"child's ru_maxrss. The LoRA rows: rank 16, alpha 32, every linear layer of the decoder.", "",
        markdown_table(["contender", "peak RSS (MB)", "vs the full-weight row", "step (s)", "trainable parameters",
                        "self-distill teacher"], table), "",
        "The full-weight row of `lora-sft` is `sft`, of both LoRA self-distill rows `self-distill`. "
        "`lora-self-distill-copy-teacher` differs from `lora-self-distill` only in its teacher, the base model held as "
        "a frozen copy beside the student, where `lora-self-distill`'s is the student's own weights with the adapter "
        "off: the difference between the two rows is what that saves. (Full-weight `self-distill` keeps no extra copy "
        "either: its teacher is the reference snapshot the run holds anyway.) The step column comes from separate "
        "processes on a shared machine; `bench/trainer_speed.py` compares step times interleaved in one process.", "",
        f"Reproduce: `{r['command']}`", ""])


def main(argv=None) -> int:
    ap = model_bench_parser(__doc__, "2 fact-stage steps, probes of 8 facts (proves the script)")
    ap.add_argument("--steps", type=int, default=0, help="fact-stage steps per contender (default 8; quick 2)")
    ap.add_argument("--work", help="run directories (default runs/bench/method-memory)")
    args = ap.parse_args(argv)
    q = args.quick
    s = {"model": args.model, "device": args.device, "steps": args.steps or (2 if q else 8), "probe": 8 if q else 32,
         "precision": "fp32" if args.device == "cpu" else "bf16"}
    work = Path(args.work).resolve() if args.work else REPO / "runs" / "bench" / "method-memory"
    work.mkdir(parents=True, exist_ok=True)
    out = out_dir(args.out)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    t0 = time.time()
    log("warm-up: triage and the format stage, shared by every contender")
    warm = run_child("warm-up", CONTENDERS["sft"], dict(s, steps=1), work, None, log)
    seed_from = work / "warm-up" / "out"
    rows = {name: run_child(name, method, s, work, seed_from, log) for name, method in CONTENDERS.items()}
    full_of = {"lora-sft": "sft", "lora-self-distill": "self-distill",
               "lora-self-distill-copy-teacher": "self-distill"}
    ratios = {n: {"rss_vs_full": ratio(v["peak_rss_mb"], rows[full_of[n]]["peak_rss_mb"]) if n in full_of else None,
                  "rss_vs_sft": ratio(v["peak_rss_mb"], rows["sft"]["peak_rss_mb"])} for n, v in rows.items()}
    result = {"quick": q, "command": " ".join(["python", "bench/method_memory.py"] + (argv if argv is not None else sys.argv[1:])),
              "settings": s, "machine": machine_info(args.device), "warm_up": warm, "contenders": rows,
              "ratios": ratios, "wall_seconds": round(time.time() - t0, 1)}
    name = f"method-memory-{args.device}{'-quick' if q else ''}"
    log(f"wrote {write_result(out, name, result, markdown(result))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
