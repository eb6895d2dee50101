"""Job manifests over a tiny model directory, for the loop tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from .conftest import TRAINER_DATA, make_tiny_model, make_tokenizer


def tiny_model_dir(root: Path, seed: int = 0) -> Path:
    d = Path(root) / f"tiny-model-{seed}"
    if not (d / "config.json").exists():
        tok = make_tokenizer()
        model = make_tiny_model(tok, seed=seed)
        model.save_pretrained(d)
        tok.save_pretrained(d)
    return d


def small_facts(root: Path, n_per_relation: int = 6) -> Path:
    """The first few facts of each relation in the bundled file (real ones: the file lists them first)."""
    out = Path(root) / "facts-small.jsonl"
    if out.exists():
        return out
    seen: dict[str, int] = {}
    lines = []
    for line in (TRAINER_DATA / "facts.jsonl").read_text().splitlines():
        obj = json.loads(line)
        rel = obj.get("relation", "")
        if seen.get(rel, 0) < n_per_relation:
            seen[rel] = seen.get(rel, 0) + 1
            lines.append(line)
    out.write_text("\n".join(lines) + "\n")
    return out


def drift_prompts_file(root: Path) -> Path:
    """Three drift prompts: a tiny model knows no fact, so the default (the known probe's questions) is empty."""
    p = Path(root) / "drift.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": q}) for q in
                           ["What is the capital of France?", "Who wrote Hamlet?", "What is gold's symbol?"]) + "\n")
    return p


BASE_SPEC = {
    "method": {"type": "sft"},
    "triage": {"prompts": 1, "shots": 2, "samples": 1},
    "training": {"maxSteps": 6, "batchSize": 4, "learningRate": 1e-3, "maxSeqLength": 96, "seed": 0},
    "deepspeed": {"zeroStage": 0, "precision": "fp32"},
    "evaluation": {"intervalSteps": 3, "maxProbeSize": 8},
    "resources": {"workers": 1, "gpusPerWorker": 0},
}


def _merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_job(root: Path, name: str = "tiny", data: Path | None = None, model: Path | None = None,
              **spec_overrides) -> Path:
    root = Path(root)
    spec = _merge(BASE_SPEC, spec_overrides)
    spec["model"] = {"uri": str(model or tiny_model_dir(root))}
    spec.setdefault("datasets", {})["train"] = str(data or small_facts(root))
    doc = {"apiVersion": "tuneguard.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def known_every_third(examples) -> dict:
    """Every third fact HighlyKnown, every third MaybeKnown, the rest Unknown."""
    from tuneguard_trainer import triage as tri

    cats = (tri.HIGHLY_KNOWN, tri.MAYBE_KNOWN, tri.UNKNOWN)
    return {e.id: cats[i % 3] for i, e in enumerate(sorted(examples, key=lambda e: e.id))}


def seed_known_triage(job_path, out):
    """The loop's own triage cache (triage.pt with its digest, as a resumed run has) for this job, with
    categories from known_every_third: a tiny random model knows no fact, so its own triage would leave
    the format stage nothing to train. Returns the splits."""
    from tuneguard import validation
    from tuneguard_trainer import data as data_mod, loop, triage as tri
    from tuneguard_trainer.checkpoints import TRIAGE_FILE, atomic_torch_save

    job = validation.load_job(job_path)
    spec = job.spec
    train = data_mod.load_examples(spec.datasets.train, spec.datasets.format)
    cats = known_every_third(train)
    res = tri.TriageResult(categories=cats, p_greedy={k: 0.0 for k in cats}, p_sample={k: None for k in cats})
    splits = tri.build_splits(train, res, spec.datasets, spec.triage, seed=spec.training.seed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"digest": loop.spec_digest(spec), "counts": dict(splits.counts), "splits": splits},
                      out / TRIAGE_FILE)
    return splits
