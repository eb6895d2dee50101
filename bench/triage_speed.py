"""SliCK triage speed: the trainer's triage() against a plain transformers generate() implementation.

    PYTHONPATH=.:operator:trainer_image python bench/triage_speed.py [--facts PATH] [--limit N] [--quick]

Both implementations run the SAME procedure on the same facts, side by side in one process: for each
fact, the exemplar sets of ``triage._exemplar_sets`` (same seed, same pool), the prompts of
``PromptFormat``, one greedy answer per prompt, and for the facts whose greedy answers are all wrong,
``samples`` samples per prompt at the temperature with top-k 40; answers are judged by normalised exact
match (``prompts.is_correct`` of ``PromptFormat.decode_answer``), each answer decoded to a stop token or
``triage.answer_budget`` tokens. The reference decodes every answer in full with ``model.generate()``
(left-padded batches of prompts, the whole prompt run for every greedy answer and every sample, no early
stop, P(T>0) over all samples); ours is ``triage.triage``.

How identity is ensured. Greedy answers are deterministic. For samples, both draw from the same
randomness: the i-th token of sample s of prompt j of a fact uses the uniform
``scoring.row_uniform(triage.sample_key(seed, fact, j, s), i)`` and the same inverse-CDF sampler
(``scoring.SamplingTable``, temperature then top-k 40 with ties kept, as transformers' warpers do); the
reference applies it in a LogitsProcessor that leaves only the drawn token, so generate() emits it. A
sample's tokens therefore depend only on its key and its logits, not on batching or on which other rows
stopped. What can still differ is floating-point rounding of the logits between two batch layouts: a
greedy near-tie or a uniform within ~1e-6 of a CDF step. The bench counts every category and P(T=0)
mismatch instead of assuming there are none.

Per preset (the hallucination table's CPU triage, and the paper's prompts 10 / samples 16 on fewer
facts) the facts are cut into chunks, and each chunk is triaged by both, alternating which goes first;
times are summed per implementation after a warm-up of both. Writes docs/results/triage-speed-<device>.
{json,md}, ``-<presets>`` added when --presets is not both, ``-quick`` for --quick.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_info, markdown_table, model_bench_parser, out_dir, ratio, write_result

PRESETS = {  # name -> TriageSpec fields
    "table": {"prompts": 4, "shots": 4, "samples": 4, "temperature": 0.5},
    "paper": {"prompts": 10, "shots": 4, "samples": 16, "temperature": 0.5},
}


# ------------------------------------------------------------------------------------- the reference


def _shared_noise(keys, width: int, temperature: float, top_k: int):
    """A LogitsProcessor that draws row b's next token with the uniform of (keys[b], tokens generated so
    far) through scoring.SamplingTable and leaves only that token, so greedy generate() emits it."""
    import torch
    from transformers import LogitsProcessor

    from tuneguard_trainer.scoring import row_uniform, sample_tokens

    class SharedNoise(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = input_ids.shape[1] - width
            u = torch.tensor([row_uniform(k, step) for k in keys], dtype=torch.float64)
            tok = sample_tokens(scores, u, temperature, top_k).to(scores.device)
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(scores.shape[0], device=scores.device), tok] = 0.0
            return out

    return SharedNoise()


def _generate(model, fmt, prompts, budget: int, pad_id: int, keys=None, temperature: float = 1.0,
              top_k: int = 0) -> list[list[int]]:
    """Plain generate() of one left-padded batch: the new tokens of each row (greedy, or sampled with
    ``keys``' noise)."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from tuneguard_trainer.scoring import left_pad, model_device

    ids, mask = left_pad(prompts, pad_id, model_device(model))
    cfg = GenerationConfig(max_new_tokens=budget, do_sample=False, eos_token_id=sorted(fmt.stop_ids),
                           pad_token_id=pad_id)
    procs = LogitsProcessorList([_shared_noise(keys, ids.shape[1], temperature, top_k)] if keys else [])
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg, logits_processor=procs)
    return [row.tolist() for row in out[:, ids.shape[1]:]]


def reference_triage(model, tokenizer, examples, spec, seed: int = 0, exemplars=None, batch_size: int = 32):
    """SliCK by plain generate(): (categories, p_greedy, p_sample), with the trainer's exemplar sets,
    prompts, answer budgets and sample keys (see the module docstring)."""
    from tuneguard_trainer import triage as tri
    from tuneguard_trainer.prompts import PromptFormat, is_correct

    fmt = PromptFormat(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sets = tri._exemplar_sets(examples, spec.prompts, spec.shots, seed, exemplars)
    budget = [tri.answer_budget(fmt, ex) for ex in examples]

    def correct_counts(rows):
        """rows: (fact index, prompt j, sample key or None) -> correct answers per fact."""
        hits = [0] * len(examples)
        by_budget: dict[int, list] = {}
        for r in rows:
            by_budget.setdefault(budget[r[0]], []).append(r)
        for b, rs in sorted(by_budget.items()):
            for k in range(0, len(rs), batch_size):
                chunk = rs[k:k + batch_size]
                keys = [key for _, _, key in chunk] if chunk[0][2] is not None else None
                outs = _generate(model, fmt, [fmt.prompt_ids(examples[i], sets[examples[i].id][j])
                                              for i, j, _ in chunk], b, pad_id, keys, spec.temperature,
                                 tri.SAMPLE_TOP_K)
                for (i, _, _), toks in zip(chunk, outs):
                    hits[i] += is_correct(fmt.decode_answer(toks), examples[i].answers)
        return hits

    greedy = correct_counts([(i, j, None) for i in range(len(examples)) for j in range(spec.prompts)])
    p_greedy = {ex.id: greedy[i] / spec.prompts for i, ex in enumerate(examples)}
    p_sample = {ex.id: None for ex in examples}
    todo = [i for i, ex in enumerate(examples) if greedy[i] == 0]
    if spec.samples > 0 and todo:
        hits = correct_counts([(i, j, tri.sample_key(seed, examples[i].id, j, s)) for i in todo
                               for j in range(spec.prompts) for s in range(spec.samples)])
        for i in todo:
            p_sample[examples[i].id] = hits[i] / (spec.prompts * spec.samples)
    cats = {ex.id: tri.categorize(p_greedy[ex.id], p_sample[ex.id]) for ex in examples}
    return cats, p_greedy, p_sample


# ------------------------------------------------------------------------------------ the comparison


def compare(model, tokenizer, examples, spec, seed: int = 0, exemplars=None, chunks: int = 4,
            batch_size: int = 32) -> dict:
    """Both implementations on the same facts, chunk by chunk (alternating which runs first), after a
    warm-up of both: seconds, facts/s, the ratio, category counts and every mismatch."""
    from tuneguard_trainer import triage as tri

    pool = exemplars if exemplars is not None else examples
    warm = list(examples[:2])
    tri.triage(model, tokenizer, warm, spec, seed=seed, progress=False, exemplars=pool, batch_size=batch_size)
    reference_triage(model, tokenizer, warm, spec, seed, pool, batch_size)
    size = -(-len(examples) // max(1, chunks))
    secs = {"ours": 0.0, "reference": 0.0}
    got = {"ours": ({}, {}, {}), "reference": ({}, {}, {})}
    for c, k in enumerate(range(0, len(examples), size)):
        chunk = list(examples[k:k + size])
        for name in (("ours", "reference") if c % 2 == 0 else ("reference", "ours")):
            t0 = time.perf_counter()
            if name == "ours":
                r = tri.triage(model, tokenizer, chunk, spec, seed=seed, progress=False, exemplars=pool,
                               batch_size=batch_size)
                parts = (r.categories, r.p_greedy, r.p_sample)
            else:
                parts = reference_triage(model, tokenizer, chunk, spec, seed, pool, batch_size)
            secs[name] += time.perf_counter() - t0
            for acc, part in zip(got[name], parts):
                acc.update(part)
    (oc, og, os_), (rc, rg, rs) = got["ours"], got["reference"]
    ids = [e.id for e in examples]
    mism = [{"id": i, "ours": oc[i], "reference": rc[i], "p_greedy": [og[i], rg[i]], "p_sample": [os_[i], rs[i]]}
            for i in ids if oc[i] != rc[i]]
    counts = {name: {cat: sum(1 for i in ids if got[name][0][i] == cat) for cat in tri.CATEGORIES}
              for name in got}
    n = len(examples)
    return {
        "facts": n, "chunks": chunks,
        "settings": {"prompts": spec.prompts, "shots": spec.shots, "samples": spec.samples,
                     "temperature": spec.temperature, "top_k": tri.SAMPLE_TOP_K},
        "seconds": {k: round(v, 2) for k, v in secs.items()},
        "facts_per_s": {k: round(n / v, 3) for k, v in secs.items()},
        "speedup": round(ratio(secs["reference"], secs["ours"]), 2),
        "counts": counts,
        "category_mismatches": len(mism), "mismatches": mism,
        "p_greedy_mismatches": sum(1 for i in ids if og[i] != rg[i]),
        # ours stops sampling a fact at its first correct sample: its P(T>0) is a lower bound there
        "p_sample_exact_where_zero": all(os_[i] == rs[i] for i in ids if rs[i] == 0.0 and oc[i] == rc[i]),
    }


def select(facts, n):
    """n facts as a run sees them: whole relations in file order (a run triages all facts of a relation
    together, and that is what shares a few-shot prefix), the last one thinned evenly (so it keeps its
    real and fictional facts)."""
    if n is None or n >= len(facts):
        return list(facts)
    by_rel: dict = {}
    for e in facts:
        by_rel.setdefault(e.relation, []).append(e)
    out = []
    for rel_facts in by_rel.values():
        need = n - len(out)
        if need <= 0:
            break
        out += rel_facts if need >= len(rel_facts) else \
            [rel_facts[(k * len(rel_facts)) // need] for k in range(need)]
    return out


def markdown(r: dict) -> str:
    rows = []
    for name, p in r["presets"].items():
        s = p["settings"]
        rows.append([name, p["facts"], f"{s['prompts']} / {s['shots']} / {s['samples']} / {s['temperature']}",
                     f"{p['facts_per_s']['ours']:.2f}", f"{p['facts_per_s']['reference']:.3f}",
                     f"{p['speedup']:.1f}x", p["category_mismatches"], p["p_greedy_mismatches"]])
    cat_rows = [[name, impl] + [c[k] for k in ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")]
                for name, p in r["presets"].items() for impl, c in p["counts"].items()]
    m = r["machine"]
    return "\n".join([
        f"# SliCK triage speed: {r['model']} on {m['device']}",
        "",
        "The trainer's `triage.triage` (one prompt pass, greedy and sampled walks together over the cached "
        "few-shot prefix, early stops) against a plain `transformers` `generate()` implementation of the same "
        "SliCK procedure (`bench/triage_speed.py`: same exemplar sets, prompts, answer budgets and judge; "
        "samples drawn from the same per-sample noise). Both in one process on the same facts, chunk by "
        f"chunk, alternating which runs first; {r['threads']} torch threads on a {m['cpus']}-core machine "
        f"(load average {m['load_average_1m']} at the end, shared with other work: ratios, not absolute times).",
        "",
        markdown_table(["preset", "facts", "prompts / shots / samples / T", "ours facts/s", "reference facts/s",
                        "speed-up", "category mismatches", "P(T=0) mismatches"], rows),
        "",
        markdown_table(["preset", "implementation", "HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"],
                       cat_rows),
        "",
        f"Facts: `{r['facts_file']}` ({r['facts_in_file']} facts; per preset, whole relations in file order, the last "
        "one thinned evenly: `select()`), exemplar "
        "pool: the whole file, seed 0, top-k 40, batch "
        f"{r['batch_size']} prompts (ours) / rows (reference).",
        "",
        f"Reproduce: `{r['command']}`",
        "",
    ])


def main(argv=None) -> int:
    ap = model_bench_parser(__doc__, quick_help="12 facts (table) and 6 (paper); checks the wiring only")
    ap.add_argument("--facts", default="bundled://facts", help="facts file (qa JSONL) or bundled://facts")
    ap.add_argument("--limit", type=int, default=None, help="facts for the table preset (default: all; see select())")
    ap.add_argument("--paper-limit", type=int, default=40, help="facts for the paper preset (10 x 16 samples)")
    ap.add_argument("--presets", default="table,paper", help=f"comma-separated, of {sorted(PRESETS)}")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--chunks", type=int, default=4, help="interleaved chunks per preset")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from tuneguard import api
    from tuneguard_trainer import models
    from tuneguard_trainer.data import load_examples

    torch.set_num_threads(args.threads)
    model, tok = models.load_model(models.resolve_model(args.model), args.device)
    facts = load_examples(args.facts)
    limits = {"table": 12 if args.quick else args.limit, "paper": 6 if args.quick else args.paper_limit}
    presets = {}
    for name in args.presets.split(","):
        spec = api.TriageSpec(**PRESETS[name])
        ex = select(facts, limits[name])
        print(f"{name}: {len(ex)} facts, {PRESETS[name]}", flush=True)
        presets[name] = compare(model, tok, ex, spec, seed=args.seed, exemplars=facts, chunks=args.chunks,
                                batch_size=args.batch_size)
        p = presets[name]
        print(f"  ours {p['facts_per_s']['ours']} facts/s, reference {p['facts_per_s']['reference']} facts/s, "
              f"speed-up {p['speedup']}x, category mismatches {p['category_mismatches']}", flush=True)
    result = {
        "model": args.model, "facts_file": args.facts, "facts_in_file": len(facts), "presets": presets,
        "threads": torch.get_num_threads(), "batch_size": args.batch_size, "seed": args.seed,
        "machine": machine_info(args.device),
        "command": "PYTHONPATH=.:operator:trainer_image python bench/triage_speed.py " + " ".join(sys.argv[1:]),
    }
    name = f"triage-speed-{args.device}" + ("" if args.presets == "table,paper" else "-" + "-".join(presets)) \
        + ("-quick" if args.quick else "")
    write_result(out_dir(args.out), name, result, markdown(result))
    return 0 if all(p["category_mismatches"] == 0 for p in presets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
