"""Leakage check speed: tuneguard_trainer.leakage.find_leaks on 100k training questions against ~2k probes.

    PYTHONPATH=.:operator:trainer_image python bench/leakage_speed.py [--train 100000] [--probes 2000] [--quick]

The data is synthetic but shaped like the bundled facts: every relation's templates (its question and
its paraphrases) are read back from trainer_image/tuneguard_trainer/data/facts.jsonl, subjects are seeded
invented names (one to three syllable words, all distinct), answers are drawn from the relation's real
answers in the file, so many questions share an answer (as continents, countries and states do).
Training questions use the relation's question template. Probes carry the relation's paraphrases, as
the bundled probes do, and are planted in four kinds, a quarter each:

* ``exact``: a training question with changed case, spacing and punctuation (must be found: exact);
* ``paraphrase``: a paraphrase template of a training question, same answers (near duplicates; the
  share found at the threshold is a measurement, not a requirement);
* ``look-alike``: a new subject in a training question's template sharing its answer (must not be found);
* ``clean``: a new subject (must not be found).

The training set also holds planted duplicates (1% of it: an earlier question re-cased), which the
training-duplicate check must find. Times (wall and this process's CPU) are the median of ``--repeats``
runs of the whole check (probes against training, and the training duplicates), and of the probe check
alone. Writes
docs/results/leakage-speed.{json,md} (``-quick`` for --quick).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, machine_info, markdown_table, median, out_dir, write_result

FACTS = REPO / "trainer_image" / "tuneguard_trainer" / "data" / "facts.jsonl"
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in ("a", "e", "i", "o", "u", "ar", "en", "is", "or")]


def relation_templates(path: Path = FACTS) -> dict[str, dict]:
    """relation -> {"templates": [question, paraphrases...] with {x}, "answers": [accepted-answer lists]},
    recovered from the file: the subject is what the relation's questions do not share (common prefix and
    suffix), and it appears verbatim in the paraphrases of a fact whose subject is capitalised."""
    by_rel: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        by_rel.setdefault(obj["relation"], []).append(obj)
    out = {}
    for rel, rows in by_rel.items():
        qs = [r["question"] for r in rows]
        pre = qs[0]
        for q in qs:
            while not q.startswith(pre):
                pre = pre[:-1]
        suf = qs[0]
        for q in qs:
            while not q.endswith(suf):
                suf = suf[1:]
        for r in rows:
            subj = r["question"][len(pre):len(r["question"]) - len(suf)]
            if subj[:1].isupper() and not subj.startswith("The ") and all(subj in p for p in r["paraphrases"]):
                templates = [pre + "{x}" + suf] + [p.replace(subj, "{x}") for p in r["paraphrases"]]
                break
        else:
            raise SystemExit(f"{rel}: no fact shows the templates")
        out[rel] = {"templates": templates, "answers": [r["answers"] for r in rows]}
    return out


def _names(rng: random.Random):
    seen: set[str] = set()
    while True:
        words = [("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))).title()
                 for _ in range(rng.choice((1, 1, 1, 2, 2, 3)))]
        name = " ".join(words)
        if name not in seen:
            seen.add(name)
            yield name


def _fill(t: str, x: str) -> str:
    s = t.format(x=x)
    return s[:1].upper() + s[1:]


def build(n_train: int, n_probes: int, seed: int = 0):
    from tuneguard_trainer.data import QAExample

    rng = random.Random(seed)
    rels = relation_templates()
    names = _names(rng)
    rel_names = sorted(rels)
    train: list[QAExample] = []
    facts = []  # (relation, subject, answers) of the training questions
    n_dup = n_train // 100
    for i in range(n_train - n_dup):
        rel = rel_names[i % len(rel_names)]
        subj, answers = next(names), list(rng.choice(rels[rel]["answers"]))
        facts.append((rel, subj, answers))
        train.append(QAExample(id=f"t{i}", question=_fill(rels[rel]["templates"][0], subj), answers=answers))
    for j in range(n_dup):  # planted training duplicates: an earlier question, re-cased
        src = train[rng.randrange(len(train))]
        train.append(QAExample(id=f"tdup{j}", question=src.question.upper(), answers=list(src.answers)))
    probes, planted = [], {}
    kinds = ("exact", "paraphrase", "look-alike", "clean")
    for k in range(n_probes):
        kind = kinds[k % 4]
        rel, subj, answers = facts[rng.randrange(len(facts))]
        tpl = rels[rel]["templates"]
        pid = f"p{k}-{kind}"
        if kind == "exact":
            q = "  " + _fill(tpl[0], subj).lower().replace("?", " ?!") + " "
            paras = [_fill(t, next(names)) for t in tpl[1:]]  # paraphrases about another subject
        elif kind == "paraphrase":
            i = 1 + k % (len(tpl) - 1)
            q = _fill(tpl[i], subj)
            paras = [_fill(t, subj) for j, t in enumerate(tpl) if j not in (0, i)]
        else:
            if kind == "clean":
                rel = rel_names[k % len(rel_names)]
                tpl, answers = rels[rel]["templates"], list(rng.choice(rels[rel]["answers"]))
            other = next(names)
            q, paras = _fill(tpl[0], other), [_fill(t, other) for t in tpl[1:]]
        probes.append(QAExample(id=pid, question=q, answers=list(answers), paraphrases=paras))
        planted[pid] = kind
    return train, probes, planted, n_dup


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100_000, help="training questions")
    ap.add_argument("--probes", type=int, default=2_000, help="probe examples (each with its paraphrases)")
    ap.add_argument("--threshold", type=float, default=None, help="default: the API's spec.leakage.similarity")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="10k training questions, 400 probes, one repeat")
    ap.add_argument("--out", help="results directory (default $OUT or docs/results/)")
    args = ap.parse_args(argv)
    if args.quick:
        args.train, args.probes, args.repeats = 10_000, 400, 1
    from tuneguard import api
    from tuneguard_trainer import leakage

    threshold = args.threshold if args.threshold is not None else api.LeakageSpec().similarity
    t0 = time.perf_counter()
    train, probes, planted, n_dup = build(args.train, args.probes, args.seed)
    build_s = time.perf_counter() - t0
    texts = sum(1 + len(p.paraphrases) for p in probes)
    print(f"{len(train):,} training questions ({n_dup:,} planted duplicates), {len(probes):,} probes "
          f"({texts:,} texts with paraphrases), threshold {threshold}; built in {build_s:.1f} s", flush=True)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    full, probe_only, full_cpu, probe_cpu, rep = [], [], [], [], None
    for r in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        rep = leakage.find_leaks(train, {"known_probe": probes}, threshold)
        full.append(time.perf_counter() - t0)
        full_cpu.append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        leakage.find_leaks(train, {"known_probe": probes}, threshold, check_train=False)
        probe_only.append(time.perf_counter() - t0)
        probe_cpu.append(time.process_time() - c0)
        print(f"  repeat {r + 1}: whole check {full[-1]:.2f} s ({full_cpu[-1]:.2f} s CPU), probes only "
              f"{probe_only[-1]:.2f} s ({probe_cpu[-1]:.2f} s CPU)", flush=True)
    rss_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024

    exact_ids, near_ids = rep.leaked_ids("exact"), rep.leaked_ids("near")
    found = {pid: ("exact" if ("known_probe", pid) in exact_ids else "near" if ("known_probe", pid) in near_ids
                   else None) for pid in planted}
    rows, per_kind = [], {}
    for kind in ("exact", "paraphrase", "look-alike", "clean"):
        ids = [p for p, k in planted.items() if k == kind]
        n_exact = sum(found[p] == "exact" for p in ids)
        n_near = sum(found[p] == "near" for p in ids)
        per_kind[kind] = {"planted": len(ids), "found_exact": n_exact, "found_near": n_near}
        rows.append((kind, len(ids), n_exact, n_near, f"{(n_exact + n_near) / max(len(ids), 1):.1%}"))
    dup_found = len({p.probe_id for p in rep.train_pairs if p.probe_id.startswith("tdup")})
    other_dups = len({p.probe_id for p in rep.train_pairs if not p.probe_id.startswith("tdup")})
    result = {
        "train": len(train), "probes": len(probes), "probe_texts": texts, "threshold": threshold,
        "seconds_whole_check_median": round(median(full), 3),
        "seconds_probes_only_median": round(median(probe_only), 3),
        "seconds_whole_check": [round(x, 3) for x in full], "seconds_probes_only": [round(x, 3) for x in probe_only],
        "cpu_seconds_whole_check": [round(x, 3) for x in full_cpu],
        "cpu_seconds_probes_only": [round(x, 3) for x in probe_cpu],
        "peak_rss_growth_mb": round(rss_mb, 1), "build_seconds": round(build_s, 2),
        "per_kind": per_kind, "pairs": len(rep.pairs),
        "train_duplicates": {"planted": n_dup, "found": dup_found, "other_found": other_dups},
        "machine": machine_info("cpu"), "seed": args.seed, "quick": args.quick,
    }
    md = "\n".join([
        f"# Leakage check speed{' (quick: figures mean nothing)' if args.quick else ''}",
        "",
        f"`tuneguard_trainer.leakage.find_leaks`, {len(train):,} synthetic training questions from the bundled facts' "
        f"relation templates against {len(probes):,} probes ({texts:,} texts with their paraphrases), similarity "
        f"threshold {threshold}, one process on a {result['machine']['cpus']}-core machine (load average "
        f"{result['machine']['load_average_1m']} when measured: shared with another benchmark).",
        "",
        markdown_table(("check", f"wall, median of {args.repeats} (s)", "wall, runs (s)", "CPU, median (s)"), [
            ("probes against training + training duplicates", f"{median(full):.2f}",
             ", ".join(f"{x:.2f}" for x in full), f"{median(full_cpu):.2f}"),
            ("probes against training only", f"{median(probe_only):.2f}",
             ", ".join(f"{x:.2f}" for x in probe_only), f"{median(probe_cpu):.2f}"),
        ]),
        "",
        "Both include normalising and indexing the training questions, which is most of the time; wall "
        "time varies with the other benchmark's load, CPU time (this process) much less.",
        "",
        f"Peak memory grew by {rss_mb:.0f} MB during the checks.",
        "",
        markdown_table(("planted probes", "n", "found exact", "found near", "found"), rows),
        "",
        f"Training duplicates: {dup_found:,} of {n_dup:,} planted ones found; {other_dups:,} other training "
        "questions matched an earlier one.",
        "",
        "```bash",
        "PYTHONPATH=.:operator:trainer_image python bench/leakage_speed.py" + (" --quick" if args.quick else ""),
        "```",
        "",
    ])
    write_result(out_dir(args.out), "leakage-speed" + ("-quick" if args.quick else ""), result, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
