#!/usr/bin/env python3
"""How much of the bundled facts a base model knows, per relation: the trainer's own SliCK triage on a
seeded sample (the same number of real facts from every relation, plus a few fictional ones), with
few-shot exemplars drawn from the whole file as in a real run. Prints a markdown table of the
HighlyKnown / MaybeKnown shares and the counts they predict for the whole file.

    PYTHONPATH=.:operator:trainer_image python scripts/measure_facts_known.py \\
        --model bundled://smollm2-135m-instruct --per-relation 34
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter, defaultdict

from tuneguard import api
from tuneguard_trainer.data import load_examples
from tuneguard_trainer.models import load_model, resolve_model
from tuneguard_trainer.triage import HIGHLY_KNOWN, MAYBE_KNOWN, triage


def stratified_sample(facts, per_relation: int, fictional_per_relation: int, seed: int):
    """``per_relation`` real and ``fictional_per_relation`` fictional facts of every relation, seeded."""
    groups = defaultdict(list)
    for f in facts:
        groups[(f.relation, f.id.split("-", 1)[0])].append(f)
    rng = random.Random(f"measure:{seed}")
    out = []
    for (rel, kind), items in sorted(groups.items()):
        n = per_relation if kind == "real" else fictional_per_relation
        out += rng.sample(items, min(n, len(items)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled://smollm2-135m-instruct")
    ap.add_argument("--data", default="bundled://facts")
    ap.add_argument("--per-relation", type=int, default=34)
    ap.add_argument("--fictional-per-relation", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampling", choices=("generate", "probability"), default="generate",
                    help="how triage draws P(T>0); HighlyKnown/MaybeKnown depend on the greedy pass only")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    facts = load_examples(args.data)
    sample = stratified_sample(facts, args.per_relation, args.fictional_per_relation, args.seed)
    model, tok = load_model(resolve_model(args.model))
    spec = api.TriageSpec(prompts=args.prompts, shots=args.shots, samples=args.samples)
    t0 = time.time()
    res = triage(model, tok, sample, spec, seed=args.seed, exemplars=facts, progress=False, sampling=args.sampling)
    seconds = time.time() - t0

    in_file = Counter((f.relation, f.id.split("-", 1)[0]) for f in facts)
    print(f"{args.model} on {args.data}: {len(sample)} facts sampled, triage {seconds:.0f} s "
          f"(prompts {args.prompts}, shots {args.shots}, samples {args.samples} by {args.sampling}, seed {args.seed})\n")
    print("| relation | sampled | HighlyKnown | MaybeKnown | real in file | predicted HK in file |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    total_hk = total_mk = 0.0
    for rel in sorted({f.relation for f in sample}):
        real = [f for f in sample if f.relation == rel and f.id.startswith("real-")]
        cats = Counter(res.categories[f.id] for f in real)
        hk, mk = cats[HIGHLY_KNOWN] / len(real), cats[MAYBE_KNOWN] / len(real)
        n = in_file[(rel, "real")]
        total_hk += hk * n
        total_mk += mk * n
        print(f"| `{rel}` | {len(real)} | {hk:.0%} | {mk:.0%} | {n} | {hk * n:.0f} |")
    n_real = sum(v for (_, k), v in in_file.items() if k == "real")
    print(f"| all real (weighted by the file) | | {total_hk / n_real:.0%} | {total_mk / n_real:.0%} | {n_real} "
          f"| {total_hk:.0f} |")
    fict = Counter(res.categories[f.id] for f in sample if f.id.startswith("fict-"))
    print(f"\nfictional facts sampled: {dict(fict)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
