"""What a self-distill teacher says at the first answer token: zero-shot vs the evaluation's few-shot prompt.

    PYTHONPATH=.:operator:trainer_image python bench/teacher_format.py [--work runs/bench/hallucination-cpu]

Reads a hallucination-table work directory (its train.jsonl and cached triage), runs the base model once
over the training facts in both prompt formats and reports, per SliCK category, how much of the teacher's
softmax (at tau = 1 and at the KL's tau) sits on the target's first token and on the teacher's own top
token, and how often the two agree. A teacher whose top token is not an answer token at all (a chat model
opening a sentence) makes the self-distill KL fight the target's format on every example, known facts
included. Writes docs/results/self-distill-teacher-format.{json,md}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, machine_info, markdown_table, model_bench_parser, out_dir, write_result

def first_token_stats(model, tok, examples, categories: dict, shots, taus) -> dict:
    """{category: {tau: {n, p_gold, p_top, top_is_gold}}} at each example's first answer position."""
    import torch

    from tuneguard_trainer import prompts
    from tuneguard_trainer.methods import collate
    from tuneguard_trainer.prompts import IGNORE_INDEX

    feats = prompts.encode_for_training(tok, examples, 4096, shots=shots)
    out: dict = {}
    for i in range(0, len(feats), 16):
        chunk, exs = feats[i:i + 16], examples[i:i + 16]
        batch = collate(chunk, tok.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"]).logits
        for row, ex in enumerate(exs):
            answer = (batch["labels"][row] != IGNORE_INDEX).nonzero().flatten()
            pos = int(answer[0]) - 1  # the logits here predict the first answer token
            gold = int(batch["labels"][row, pos + 1])
            for tau in taus:
                p = torch.softmax(logits[row, pos].float() / tau, -1)
                acc = out.setdefault(categories[ex.id], {}).setdefault(str(tau), {"n": 0, "p_gold": 0.0,
                                                                                 "p_top": 0.0, "top_is_gold": 0})
                acc["n"] += 1
                acc["p_gold"] += float(p[gold])
                acc["p_top"] += float(p.max())
                acc["top_is_gold"] += int(int(p.argmax()) == gold)
    for by_tau in out.values():
        for acc in by_tau.values():
            acc["p_gold"] = round(acc["p_gold"] / acc["n"], 4)
            acc["p_top"] = round(acc["p_top"] / acc["n"], 4)
    return out


def markdown(r: dict) -> str:
    from tuneguard_trainer.triage import CATEGORIES

    rows = []
    for fmt in ("zero-shot", "few-shot"):
        for cat in CATEGORIES:
            for tau, a in sorted(r["stats"][fmt].get(cat, {}).items(), reverse=True):
                rows.append([fmt, cat, tau, a["n"], f"{a['p_gold']:.3f}", f"{a['p_top']:.3f}",
                             f"{a['top_is_gold']}/{a['n']}"])
    return "\n".join([
        f"# The self-distill teacher's first answer token: {r['model']}",
        "",
        f"The base model (the self-distill teacher) on the {r['facts']} training facts of `{r['work']}`, at the "
        "position that predicts each target's first token; prompts as the trainer builds them (zero-shot: "
        f"the student's closed-book chat prompt; few-shot: the evaluation's, {r['shots']} exemplars of the "
        "fact's relation). p(gold): the softmax mass on the target's first token; p(top): on the teacher's own "
        "most likely token. Means over the facts of each SliCK category.",
        "",
        markdown_table(["teacher prompt", "category", "tau", "facts", "p(gold)", "p(top)", "top = gold"], rows),
        "",
        f"Reproduce: `{r['command']}`",
        "",
    ])


def main(argv=None) -> int:
    ap = model_bench_parser(__doc__)
    ap.add_argument("--work", default=str(REPO / "runs" / "bench" / "hallucination-cpu"),
                    help="a hallucination_table.py work directory (train.jsonl and triage-*.json)")
    ap.add_argument("--shots", type=int, default=4, help="exemplars per few-shot prompt (triage.shots)")
    ap.add_argument("--tau", type=float, default=0.5, help="the KL's temperature")
    args = ap.parse_args(argv)

    import torch

    from tuneguard_trainer import data as data_mod, models
    from tuneguard_trainer.prompts import FewShotExemplars

    work = Path(args.work)
    triages = sorted(work.glob("triage-*.json"))
    if not (work / "train.jsonl").exists() or not triages:
        ap.error(f"{work} has no train.jsonl or triage-*.json: run bench/hallucination_table.py first")
    categories = json.loads(triages[-1].read_text())["categories"]
    examples = list(data_mod.load_examples(str(work / "train.jsonl"), "qa"))
    model, tok = models.load_model(models.resolve_model(args.model), device=args.device, dtype=torch.float32)
    model.eval()
    exemplars = FewShotExemplars(examples, args.shots, seed=0)  # the evaluator's, for training seed 0
    taus = (1.0, args.tau)
    stats = {"zero-shot": first_token_stats(model, tok, examples, categories, None, taus),
             "few-shot": first_token_stats(model, tok, examples, categories, exemplars.for_example, taus)}
    result = {"model": args.model, "work": str(work.relative_to(REPO) if work.is_relative_to(REPO) else work),
              "facts": len(examples), "shots": args.shots, "stats": stats, "machine": machine_info(args.device),
              "command": " ".join(["python", "bench/teacher_format.py"] + (argv if argv is not None else sys.argv[1:]))}
    write_result(out_dir(args.out), "self-distill-teacher-format", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
