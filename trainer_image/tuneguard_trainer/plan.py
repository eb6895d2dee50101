"""The plan of a job, made before any training from the loop's own stages (loop.prepare,
loop.triage_and_split, loop.check_leakage): what triage found, overall and per relation; the duplicates and
leaks; the known-fact loss to expect per method, from Tuneguard's own table (tuneguard.evidence) and from
Gekhman et al.'s fit; and the recommended method (tuneguard.advice).

`tuneguard plan JOB.yaml` runs only these stages; every run makes the same plan right after the leakage
check (report.json "plan"), and a job with spec.planOnly stops there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Optional

import yaml

from tuneguard import advice, api, evidence

from .triage import CATEGORIES, HIGHLY_KNOWN, MAYBE_KNOWN, UNKNOWN, WEAKLY_KNOWN

log = logging.getLogger("tuneguard.trainer")

PLAN_FILE = "plan.json"
EXAMPLE_PAIRS = 3  # pairs shown of each kind; report.json's leakage section lists more
NO_RELATION = "(no relation)"


def category_counts(examples, categories: dict) -> dict:
    out = {c: 0 for c in CATEGORIES}
    for ex in examples:
        out[categories[ex.id]] += 1
    return out


def per_relation(examples, categories: dict) -> dict:
    """{relation: {category: count}}, relations sorted."""
    by_rel: dict[str, list] = {}
    for ex in examples:
        by_rel.setdefault(ex.relation or NO_RELATION, []).append(ex)
    return {rel: category_counts(exs, categories) for rel, exs in sorted(by_rel.items())}


def learns_new_facts(spec: api.FineTuneJobSpec, goal: Optional[str]) -> bool:
    """The job's intent: --goal when given, else the spec's: unknownPolicy keep trains the Unknown facts'
    answers, so they are meant to be learned."""
    return goal == "learn" if goal else spec.triage.unknown_policy == "keep"


def _gekhman(train_counts: dict, relabelled: int) -> dict:
    """Their fit on the training split's shares (their Known includes WeaklyKnown). Relabelled Unknown facts
    are the paper's "I don't know" variant, which the fit does not cover: they count as neither."""
    n = sum(train_counts.values())
    unknown = train_counts[UNKNOWN] - relabelled
    share_known = (n - train_counts[UNKNOWN]) / max(n, 1)
    share_unknown = unknown / max(n, 1)
    return {"formula": evidence.GEKHMAN_FIT_TEXT, "share_known": round(share_known, 4),
            "share_unknown": round(share_unknown, 4),
            "predicted_accuracy": round(evidence.gekhman_accuracy(share_known, share_unknown), 1),
            "without_unknown": round(evidence.gekhman_accuracy(1.0, 0.0), 1),
            "relabelled_not_covered": relabelled,
            "what": "absolute test accuracy (points) in their setting: PaLM 2-M on EntityQuestions, "
                    "in-distribution; their model, not ours. Their shares are of the examples the model fits; "
                    "here of the training split, as if training fitted them all"}


def _pairs(pairs) -> list[str]:
    return [p.line() for p in pairs[:EXAMPLE_PAIRS]]


def build(p, splits, leak, *, dropped: int = 0, refusal: Optional[str] = None, goal: Optional[str] = None) -> dict:
    """The plan of a prepared job (loop.Prepared) from its splits and leakage report."""
    from .format_stage import known_examples

    spec, cats = p.job.spec, splits.categories
    overall = category_counts(p.examples, cats)
    n = len(p.examples)
    train_counts = category_counts(splits.train, cats)
    facts = advice.DataFacts(
        slick=splits.slick, examples=n, highly_known=overall[HIGHLY_KNOWN], maybe_known=overall[MAYBE_KNOWN],
        weakly_known=overall[WEAKLY_KNOWN], unknown=overall[UNKNOWN], known_train=len(known_examples(splits)),
        format_stage=spec.format_stage.enabled, learn_new_facts=learns_new_facts(spec, goal))
    adv = advice.advise(facts, evidence.table_for(spec.model.uri))
    t = adv.table
    return {
        "job": p.job.metadata.name,
        "model": spec.model.uri,
        "data": spec.datasets.train,
        "triage": {"slick": splits.slick, "settings": spec.triage.wire(), "examples": n, "counts": overall,
                   "shares": {c: round(v / max(n, 1), 4) for c, v in overall.items()},
                   "known_share": round(facts.known_share, 4), "unknown_share": round(facts.unknown_share, 4),
                   "per_relation": per_relation(p.examples, cats)},
        "train": {"examples": len(splits.train), "counts": train_counts, "unknown_policy": spec.triage.unknown_policy,
                  "dropped": splits.counts.get("dropped", 0), "relabelled": splits.counts.get("relabelled", 0),
                  "known_for_format_stage": facts.known_train},
        "duplicates": {"merged_at_load": getattr(p.examples, "duplicates", 0),
                       "in_training_split": leak.counts()["train_duplicates"], "examples": _pairs(leak.train_pairs)},
        "leakage": {"policy": spec.leakage.policy, "counts": leak.counts(dropped), "examples": _pairs(leak.pairs),
                    "refusal": refusal},
        "expected_known_loss": {
            "measured": {"model": t.model, "source": t.source, "command": t.command, "scope": t.scope,
                         "steps": t.steps, "rows": [dataclasses.asdict(r) for r in t.rows]},
            "gekhman_fit": _gekhman(train_counts, splits.counts.get("relabelled", 0)),
        },
        "recommendation": {"rule": adv.rule, "method": adv.method, "settings": adv.settings(), "reason": adv.reason,
                           "notes": adv.notes, "learn_new_facts": facts.learn_new_facts},
    }


def flow(settings: Optional[dict]) -> Optional[str]:
    """Spec fields in YAML flow style, as one would paste them into a manifest."""
    return None if settings is None else yaml.safe_dump(settings, default_flow_style=True, sort_keys=False).strip()


def status(plan: dict) -> api.PlanSummary:
    rec, tri = plan["recommendation"], plan["triage"]
    return api.PlanSummary(method=rec["method"], settings=flow(rec["settings"]), rule=rec["rule"],
                           reason=rec["reason"], known_share=tri["known_share"], unknown_share=tri["unknown_share"])


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%"


def describe(plan: dict) -> str:
    """The plan as printed: a few short sections, each labelled with its source."""
    tri, tr, rec = plan["triage"], plan["train"], plan["recommendation"]
    st = tri["settings"]
    kind = (f"SliCK triage ({st['prompts']} prompt(s) x {st['shots']} shots, {st['samples']} sample(s))"
            if tri["slick"] else "closed-book check (triage disabled: not SliCK categories)")
    short = {HIGHLY_KNOWN: "HK", MAYBE_KNOWN: "MK", WEAKLY_KNOWN: "WK", UNKNOWN: "Unk"}
    width = max([len(r) for r in tri["per_relation"]] + [len("overall")])
    head = f"  {'relation':<{width}}  facts " + " ".join(f"{short[c]:>4}" for c in CATEGORIES) + "  Unk share"
    lines = [f"Plan for {plan['job']}: {plan['model']} on {plan['data']} ({tri['examples']} facts)",
             f"{kind}:",
             "  " + ", ".join(f"{c} {tri['counts'][c]} ({_pct(tri['shares'][c])})" for c in CATEGORIES), head]

    def row(name, counts):
        total = sum(counts.values())
        return (f"  {name:<{width}}  {total:>5} " + " ".join(f"{counts[c]:>4}" for c in CATEGORIES)
                + f"  {_pct(counts[UNKNOWN] / max(total, 1)):>9}")

    lines += [row(rel, c) for rel, c in tri["per_relation"].items()] + [row("overall", tri["counts"])]
    lines.append(f"Training split: {tr['examples']} facts ("
                 + ", ".join(f"{c} {tr['counts'][c]}" for c in CATEGORIES) + f"), unknownPolicy {tr['unknown_policy']}"
                 + (f": {tr['dropped']} dropped" if tr["dropped"] else "")
                 + (f": {tr['relabelled']} relabelled" if tr["relabelled"] else "")
                 + f"; {tr['known_for_format_stage']} Known facts for the format stage")
    dup, leak = plan["duplicates"], plan["leakage"]
    lines.append(f"Duplicates: {dup['merged_at_load']} merged when the file was read, {dup['in_training_split']} "
                 "near duplicate(s) in the training split")
    lines += [f"  e.g. {x}" for x in dup["examples"]]
    c = leak["counts"]
    lines.append(f"Leakage (policy {leak['policy']}): {c['exact']} probe fact(s) duplicate a training question "
                 f"exactly, {c['near']} nearly" + (f"; {c['dropped']} dropped" if c["dropped"] else ""))
    lines += [f"  e.g. {x}" for x in leak["examples"]]
    if leak["refusal"]:
        lines.append("  a run would fail here (policy refuse)")
    m, g = plan["expected_known_loss"]["measured"], plan["expected_known_loss"]["gekhman_fit"]
    lines += ["Known-fact loss to expect, by method:",
              f"  (a) Tuneguard's table ({m['source']}), {m['scope']}, {m['steps']} steps; drop at the last step:",
              f"      {'row':<26} seeds  known drop (points) [95 %]  new facts learned  fabrication"]
    for r in m["rows"]:
        interval = "[{:.1f}, {:.1f}]".format(*r["known_drop_ci95"])
        lines.append(f"      {r['row']:<26} {r['seeds']:>5}  {r['known_drop']:>5.1f} {interval:<20}"
                     f"  {r['new_fact_accuracy']:>15.0f} %  {r['fabrication_rate']:>9.0f} %")
    lines += [f"  (b) Gekhman et al.'s fit, {g['formula']}, on this training split",
              f"      (share_known {g['share_known']:.2f}, share_unknown {g['share_unknown']:.2f}): "
              f"{g['predicted_accuracy']:.1f} % test accuracy, {g['without_unknown']:.1f} % without Unknown facts;",
              f"      that is {g['what']}"]
    if g["relabelled_not_covered"]:
        lines.append(f"      {g['relabelled_not_covered']} relabelled Unknown facts are not covered by the fit")
    lines += [f"Note: {n}" for n in rec["notes"]]
    if rec["method"] is None:
        lines.append(f"Recommended: nothing ({rec['rule']}): {rec['reason']}")
    else:
        lines += [f"Recommended: {rec['method']} with {flow(rec['settings'])}", f"  why ({rec['rule']}): {rec['reason']}"]
    return "\n".join(lines)


def plan_job(job_path: Path, device: str = "auto", out: Optional[Path] = None, goal: Optional[str] = None) -> int:
    """`tuneguard plan`: the loop's checks and triage on this machine, the plan printed (and written to
    OUT/plan.json). Exit codes: 0 planned; 2 the job or its data is invalid."""
    from tuneguard.validation import InvalidManifest, load_job

    from . import loop
    from .checkpoints import atomic_write_text
    from .local import configure_threads

    loop.setup_logging(True)
    try:
        job = load_job(Path(job_path))
    except (InvalidManifest, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_threads()
    try:
        p = loop.prepare(Path(job_path), device, job)
        p.model.to(p.device)
        _, splits = loop.triage_and_split(p)
    except loop.JobFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # e.g. nothing left to train on after the Unknown policy
        print(f"error: triage: {e}", file=sys.stderr)
        return 2
    leak, refusal = loop.check_leakage(splits, job.spec)
    plan = build(p, splits, leak, refusal=refusal, goal=goal)
    print(describe(plan))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / PLAN_FILE, json.dumps(plan, indent=2) + "\n")
        print(f"plan: {Path(out) / PLAN_FILE}")
    return 0
