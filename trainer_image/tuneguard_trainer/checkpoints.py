"""Resumable checkpoints and the delivered best model, all written atomically.

Layout under the output directory::

    checkpoints/
      step-000040/           one resumable checkpoint
        state/               DeepSpeed's engine.save_checkpoint: model, optimizer, lr scheduler
                             (ZeRO shards one file per rank)
        rng-rank<R>.pt       each rank's RNG states (python, numpy, torch, cuda)
        meta.json            step, epoch, data position, evaluation history (also in the client state)
      latest                 text: the name of the newest complete checkpoint
      best                   text: the checkpoint of the best evaluation within the guardrail budgets
      .tmp-step-000060/      a checkpoint being written (ignored and removed on start)
    best-model/              Hugging Face directory (save_pretrained + tokenizer) of the best evaluation;
                             with a LoRA adapter, the adapter merged into the weights
    best-adapter/            with a LoRA adapter only: the adapter alone (peft's save_pretrained)
    triage.pt                the triage result and splits, so a resumed run does not triage again

A checkpoint is written into ``.tmp-<name>`` by every rank, then renamed into place by rank 0 (and,
when the output directory is not shared between nodes, by each node's local rank 0), and only then is
the ``latest`` pointer replaced (write + fsync + os.replace). A kill -9 at any moment leaves either
the previous checkpoint or the new one as ``latest``, never a partial one. meta.json lists every file
of the checkpoint with its size; a resume (:meth:`CheckpointManager.resume_point`) takes the newest
checkpoint whose files are all there at their sizes, so a checkpoint damaged after it was written (a
truncated file, a deleted shard) costs the steps since the one before it, not the run. That is why the
checkpoint before latest is kept too; older ones other than best are deleted after the pointer moves.

best-model (and best-adapter) is replaced by renaming: the new copy is written to ``.best-model.tmp``;
the old directory is renamed to ``.best-model.old``, the new one into place, then the old one is deleted.
A crash in the short window between the two renames leaves ``.best-model.old``, which start-up renames
back. The adapter is written first: a best-adapter newer than best-model is possible after a crash, the
reverse never is.

With an adapter (``trainable_only``) a checkpoint holds only the trainable parameters: the frozen base is
the format-stage snapshot or the base model, which a resumed run rebuilds before it loads the checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import random
import shutil
import socket
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

CKPT_DIR = "checkpoints"
BEST_MODEL = "best-model"
BEST_ADAPTER = "best-adapter"
TRIAGE_FILE = "triage.pt"

log = logging.getLogger("tuneguard.trainer")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _tmp_name(path: Path) -> Path:
    """A temporary sibling of path unique to this process on this host: in containers every worker is
    PID 1, and on a shared output volume each node's local rank 0 writes the same pointers."""
    return path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")


def _volume_full(where: Path, e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


@contextlib.contextmanager
def writing(path: Path, cleanup: Optional[Path] = None):
    """A write to path (a file, or a directory being filled) that failed because its volume is full comes out
    as OSError(ENOSPC) naming path, with ``cleanup`` (the partial temporary) removed: torch.save reports a full
    disk as a RuntimeError from its zip writer, and a partial temporary would hold the space."""
    try:
        yield
    except Exception as e:
        where = Path(path) if Path(path).is_dir() else Path(path).parent
        if not _volume_full(where, e):
            raise
        if cleanup is not None and Path(cleanup).is_dir():
            shutil.rmtree(cleanup, ignore_errors=True)
        elif cleanup is not None:
            Path(cleanup).unlink(missing_ok=True)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    with writing(path, cleanup=tmp):
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: Path) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    with writing(path, cleanup=tmp):
        torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def debug_kill(var: str, step: int) -> None:
    """Tests of kill -9 safety: $var=N sends SIGKILL to this process at that point of step N, as a node
    failure would (no clean-up runs): TUNEGUARD_DEBUG_KILL_AT_STEP right after optimizer step N (and its
    checkpoint, if one was due), TUNEGUARD_DEBUG_KILL_IN_SAVE inside step N's checkpoint, before its rename."""
    if os.environ.get(var) == str(step):
        import signal
        import sys

        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _barrier():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointManager:
    def __init__(self, out: Path, rank: int, local_rank: int):
        self.out = Path(out)
        self.dir = self.out / CKPT_DIR
        self.rank, self.local_rank = rank, local_rank

    # ------------------------------------------------------------------------------------ pointers
    def _read_pointer(self, name: str) -> Optional[Path]:
        p = self.dir / name
        try:
            target = p.read_text().strip()
        except OSError:
            return None
        d = self.dir / target
        return d if target and (d / "meta.json").exists() else None

    def latest(self) -> Optional[Path]:
        return self._read_pointer("latest")

    def best(self) -> Optional[Path]:
        return self._read_pointer("best")

    def recover(self) -> None:
        """Start-up clean-up after a crash (local rank 0 of each node)."""
        if self.local_rank != 0:
            return
        if self.dir.exists():
            for tmp in self.dir.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        for name in (BEST_MODEL, BEST_ADAPTER):
            old, cur = self.out / f".{name}.old", self.out / name
            if old.exists() and not cur.exists():
                os.rename(old, cur)
            shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(self.out / f".{name}.tmp", ignore_errors=True)

    # ---------------------------------------------------------------------------------------- save
    def save(self, engine, step: int, client_state: dict, meta: dict, keep_best: bool = False,
             trainable_only: bool = False) -> Path:
        """Collective: every rank calls it. Returns the final checkpoint directory."""
        name = f"step-{step:06d}"
        tmp, final = self.dir / f".tmp-{name}", self.dir / name
        if self.local_rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if final.exists() and self.rank == 0:  # re-saving the same step (resume then eval): replace
                shutil.rmtree(final)
        _barrier()
        if self.local_rank == 0:
            tmp.mkdir(parents=True, exist_ok=True)
        _barrier()
        with writing(tmp, cleanup=tmp if self.local_rank == 0 else None):
            engine.save_checkpoint(str(tmp), tag="state", client_state=client_state, save_latest=False,
                                   exclude_frozen_parameters=trainable_only)
            torch.save(rng_state(), tmp / f"rng-rank{self.rank}.pt")
        _barrier()
        if self.rank == 0:
            files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
            atomic_write_text(tmp / "meta.json", json.dumps({**meta, "files": files}, indent=2, default=str))
            debug_kill("TUNEGUARD_DEBUG_KILL_IN_SAVE", step)
            os.rename(tmp, final)
            _fsync_dir(self.dir)
        _barrier()
        if self.local_rank == 0 and tmp.exists():  # output not shared with rank 0's node
            os.rename(tmp, final)
        _barrier()
        if self.local_rank == 0:
            atomic_write_text(self.dir / "latest", name)
            if keep_best:
                atomic_write_text(self.dir / "best", name)
            self._prune()
        _barrier()
        return final

    def mark_best(self, step: int) -> None:
        """Point `best` at an existing checkpoint of this step (if one was saved)."""
        if self.local_rank == 0 and (self.dir / f"step-{step:06d}" / "meta.json").exists():
            atomic_write_text(self.dir / "best", f"step-{step:06d}")
            self._prune()

    def _complete(self, d: Path) -> bool:
        """meta.json is there and every file it lists has its recorded size."""
        try:
            files = json.loads((d / "meta.json").read_text()).get("files")
        except (OSError, ValueError):
            return False
        return all((d / rel).is_file() and (d / rel).stat().st_size == size for rel, size in (files or {}).items())

    def _by_step(self) -> list[Path]:
        return sorted(self.dir.glob("step-*"), reverse=True) if self.dir.exists() else []

    def resume_point(self) -> Optional[Path]:
        """The newest complete checkpoint: latest, else the newest older one whose files are intact."""
        latest = self.latest()
        if latest is not None and self._complete(latest):
            return latest
        for d in self._by_step():
            if (latest is None or d.name < latest.name) and self._complete(d):
                log.warning("checkpoint %s is damaged or missing (a file is absent or not its recorded size); "
                            "resuming from %s", latest.name if latest else "latest", d.name)
                return d
        return None

    def _prune(self) -> None:
        latest = self.latest()
        keep = {p.name for p in (latest, self.best()) if p is not None}
        if latest is not None:  # the fallback if latest turns out damaged: the newest complete one before it
            fallback = next((d for d in self._by_step() if d.name < latest.name and self._complete(d)), None)
            keep |= {fallback.name} if fallback else set()
        for d in self.dir.glob("step-*"):
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    # ---------------------------------------------------------------------------------------- load
    def load(self, engine, path: Path, trainable_only: bool = False) -> dict:
        """Collective: restore engine (model, optimizer, scheduler) and this rank's RNG; returns client state."""
        _, client_state = engine.load_checkpoint(str(path), tag="state", load_optimizer_states=True,
                                                 load_lr_scheduler_states=True, load_module_strict=not trainable_only)
        rng = path / f"rng-rank{self.rank}.pt"
        if rng.exists():
            set_rng_state(torch.load(rng, weights_only=False))
        return client_state or {}

    # ---------------------------------------------------------------------------------- best model
    def save_best_model(self, model, tokenizer) -> Path:
        """Rank 0 only: write the HF model directory atomically (see module doc); an adapted model also as
        its adapter, first."""
        from . import adapters

        if adapters.is_adapted(model):
            self._replace_dir(BEST_ADAPTER, lambda d: model.save_pretrained(str(d), safe_serialization=True))
            merged = adapters.merged_state_dict(model)

            def write(d):
                model.get_base_model().save_pretrained(str(d), state_dict=merged, safe_serialization=True)
        else:
            def write(d):
                model.save_pretrained(str(d), safe_serialization=True)

        def write_with_tokenizer(d):
            write(d)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(d))

        return self._replace_dir(BEST_MODEL, write_with_tokenizer)

    def _replace_dir(self, name: str, write) -> Path:
        tmp, cur, old = self.out / f".{name}.tmp", self.out / name, self.out / f".{name}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        with writing(tmp, cleanup=tmp):
            write(tmp)
        _fsync_dir(tmp)
        if cur.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(cur, old)
        os.rename(tmp, cur)
        _fsync_dir(self.out)
        shutil.rmtree(old, ignore_errors=True)
        return cur

    def load_best_weights(self, model) -> bool:
        """Copy the best-model weights into `model` in place (rollback): an adapted model's adapter from
        best-adapter. False when there is none."""
        from . import adapters

        if adapters.is_adapted(model):
            if not (self.out / BEST_ADAPTER / "adapter_config.json").exists():
                return False
            from peft.utils import load_peft_weights

            adapters.load_adapter_state(model, load_peft_weights(str(self.out / BEST_ADAPTER), device="cpu"))
            return True
        cur = self.out / BEST_MODEL
        files = sorted(cur.glob("*.safetensors"))
        if not files:
            return False
        from safetensors.torch import load_file

        state: dict = {}
        for f in files:
            state.update(load_file(str(f)))
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        with torch.no_grad():
            for k, v in state.items():
                if k in params:
                    params[k].copy_(v.to(params[k].dtype))
        return True
