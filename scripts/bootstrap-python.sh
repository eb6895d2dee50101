#!/usr/bin/env bash
# Creates (once) and activates the project's virtualenv, cached outside the repo and keyed by the
# dependency files, so a fresh clone on a warm machine reuses it. Prints the venv path.
# Usage: source-free: `scripts/bootstrap-python.sh` then use "$(scripts/bootstrap-python.sh)/bin/python".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TUNEGUARD_CACHE:-$HOME/.cache/tuneguard}
python=${PYTHON:-python3}
# Keyed by what decides the installed packages: the dependency lists and the pinned constraints.
key=$( { sed -n '/^dependencies/,/^\[project.scripts\]/p' "$root/pyproject.toml"; cat "$root/constraints.txt"; } \
      | sha256sum | cut -c1-16)
venv="$cache/venv-$key"
mkdir -p "$cache"
# One creator at a time: a second caller waits here, then finds the venv complete.
exec 9>"$cache/.venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo ">> creating virtualenv $venv (first run on this machine: downloads torch, transformers, deepspeed)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  # DeepSpeed's setup imports torch, so torch goes in first.
  "$venv/bin/pip" install -q -c "$root/constraints.txt" torch >&2
  "$venv/bin/pip" install -q -c "$root/constraints.txt" -e "$root[operator,trainer,test]" >&2
  touch "$venv/.complete"
fi
flock -u 9
# The venv is shared between clones; each checkout's code wins through PYTHONPATH (set by the
# Makefile and pytest), so the editable install above only provides the `tuneguard` script.
ln -sfn "$venv" "$root/.venv"
echo "$venv"
