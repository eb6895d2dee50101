#!/usr/bin/env bash
# Download the wheels bench/trainer_speed.py needs for TRL's SFTTrainer that the trainer venv lacks, for
# a given Python version, into one directory (default .whl/bench-py<ver>/), so that a machine without a
# package index (the GPU box) can install them from there. Only pure-Python wheels and the few
# binary wheels pandas needs; torch/transformers are never downloaded.
#   bench/fetch_wheels.sh [PYVER=3.12] [DIR]
# Versions are pinned here (and in bench/trl_site.py): TRL 1.16.0 + datasets 5.2.0 run with
# transformers 5.x.
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${1:-3.12}"
DIR="${2:-.whl/bench-py${PYVER/./}}"
PY="${PYTHON:-$(scripts/bootstrap-python.sh)/bin/python}"
mkdir -p "$DIR"
ABI="cp${PYVER/./}"
PKGS=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pandas==3.0.3 tzdata==2026.6 six==1.17.0)
# what the GPU box lacks besides these is listed in EXTRA (default none); e.g. EXTRA="pyarrow xxhash accelerate==1.15.0"
read -r -a EXTRA_PKGS <<< "${EXTRA:-}"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --abi "$ABI" --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DIR" "${PKGS[@]}" "${EXTRA_PKGS[@]}"
ls -la "$DIR"
du -sh "$DIR"
