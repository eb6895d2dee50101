"""Pure helpers of the benchmark scripts (bench/): statistics, tables, the hallucination table's
expectation checks and training mix, the operator benchmark's metric parsing. No models, no cluster."""

from __future__ import annotations

import json
import math

import pytest

from bench import common


def test_mean_std_ignores_missing_and_uses_sample_std():
    m, s = common.mean_std([1.0, None, 3.0])
    assert m == 2.0 and s == pytest.approx(math.sqrt(2))
    assert common.mean_std([5.0]) == (5.0, 0.0)
    assert common.mean_std([None]) == (None, None)


def test_percentile_interpolates():
    xs = list(range(1, 101))
    assert common.percentile(xs, 50) == pytest.approx(50.5)
    assert common.percentile(xs, 99) == pytest.approx(99.01)
    assert common.percentile([], 50) is None
    assert common.median([3.0]) == 3.0


def test_tables_and_formatting():
    t = common.markdown_table(["a", "b"], [[1, None]])
    assert t.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | - |"]
    assert common.fmt_pm(0.5, 0.025) == "50.0 ± 2.5"
    assert common.fmt_pm(None, None) == "-"
    assert common.ratio(2.0, 4.0) == 0.5 and common.ratio(1.0, 0.0) is None
    assert common.yes_no(True) == "yes" and common.yes_no(None) == "n/a"


def _table(**rows):
    t = {}
    for m, (drop, new, fab) in rows.items():
        t[m] = {"known_relative_drop": {"mean": drop, "std": 0.01, "ci95": [max(drop - 0.02, 0), drop + 0.02]},
                "new_fact_accuracy": {"mean": new, "std": 0.0},
                "fabrication_rate": {"mean": fab, "std": 0.0}, "abstention_rate": {"mean": 0.0, "std": 0.0}}
    return t


def test_expectations_all_hold():
    from bench.hallucination_table import expectations

    t = _table(**{"sft": (0.20, 0.90, 0.9), "self-distill": (0.05, 0.85, 0.9),
                  "self-distill-base-teacher": (0.30, 0.5, 0.9), "freeze": (0.01, 0.2, 0.9),
                  "sft-abstain": (0.15, 0.5, 0.3)})
    got = {e["expectation"]: e["held"] for e in expectations(t, 3)}
    assert all(got.values()), got
    assert len(got) == 7


def test_expectations_report_failures():
    from bench.hallucination_table import expectations

    t = _table(**{"sft": (0.05, 0.5, 0.5), "self-distill": (0.05, 0.2, 0.5),
                  "self-distill-base-teacher": (0.01, 0.2, 0.5), "freeze": (0.10, 0.2, 0.5),
                  "sft-abstain": (0.0, 0.5, 0.6)})
    got = [e["held"] for e in expectations(t, 3)]
    # precondition fails, SFT's drop under 10 %, self-distill not a third of it, new facts too low, the base
    # teacher forgets less, freeze not smallest, abstain raised fabrication
    assert got == [False, False, False, False, False, False, False]


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_facts():
    from bench.hallucination_table import bootstrap_ci

    wide = bootstrap_ci([0.8, 0.7, 0.9], [20, 20, 20])
    narrow = bootstrap_ci([0.8, 0.7, 0.9], [2000, 2000, 2000])
    assert wide[0] < 0.8 < wide[1] and narrow[0] < 0.8 < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert bootstrap_ci([0.5, 0.5], [None, None]) == [0.5, 0.5]  # no probe: seeds only
    assert bootstrap_ci([None], [10]) is None


def test_build_mix_makes_unknown_at_least_half(tmp_path):
    from bench.hallucination_table import build_mix
    from tuneguard_trainer.data import QAExample

    exs, cats = [], {}
    for i in range(40):
        cat = ["HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown"][i % 4] if i < 20 else "HighlyKnown"
        e = QAExample(id=f"f{i:02d}", question=f"q{i}?", answers=[f"a{i}"], relation="r")
        exs.append(e)
        cats[e.id] = cat
    s = {"unknown_share": 0.5, "known_probe_fraction": 0.5, "unknown_probe_size": 2}
    mix = build_mix(exs, cats, s, tmp_path)
    assert mix["unknown_share"] >= 0.5
    train = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    known = [json.loads(x) for x in (tmp_path / "known-probe.jsonl").read_text().splitlines()]
    unknown = [json.loads(x) for x in (tmp_path / "unknown-probe.jsonl").read_text().splitlines()]
    ids = [r["id"] for r in train + known + unknown]
    assert len(ids) == len(set(ids))  # no fact is both trained on and probed
    assert sorted(cats[r["id"]] for r in known) == ["HighlyKnown"] * 12 + ["MaybeKnown"] * 2  # half of 25, of 5
    assert all(cats[r["id"]] == "Unknown" for r in unknown)
    assert mix["train_categories"]["Unknown"] == 4 and mix["train"] == 8  # 5 Unknown, 1 probed

    # the CPU scale caps the Unknown training facts; the other side shrinks with them to keep the share
    capped = build_mix(exs, cats, dict(s, max_unknown_train=2), tmp_path / "capped")
    assert capped["train_categories"]["Unknown"] == 2 and capped["train"] == 4
    assert capped["unknown_probe"] == mix["unknown_probe"]  # the probe is drawn before the cap


def test_prometheus_metric_sum():
    from bench.operator_scale import metric

    text = "\n".join([
        "# HELP tuneguard_operator_reconcile_errors_total x",
        'tuneguard_operator_reconcile_errors_total{kind="a"} 2.0',
        'tuneguard_operator_reconcile_errors_total{kind="b"} 1.0',
        "tuneguard_operator_reconcile_errors_created 17.0",
        "tuneguard_operator_reconcile_duration_seconds_count 5.0",
    ])
    assert metric(text, "tuneguard_operator_reconcile_errors_total") == 3.0
    assert metric(text, "tuneguard_operator_reconcile_duration_seconds_count") == 5.0
    assert metric(text, "missing") == 0.0


def test_table_task_order_cuts_the_least_needed_runs_last():
    from bench.hallucination_table import MAIN_ROWS, task_order

    s = {"methods": list(MAIN_ROWS) + ["self-distill-l0.3", "self-distill-l3"],
         "sweep_rows": ["self-distill-l0.3", "self-distill-l3"], "sweep_seeds": 1}
    tasks = task_order(s, [0, 1, 2])
    assert len(tasks) == len(set(tasks)) == 6 * 3 + 2
    assert tasks[:6] == [(m, 0) for m in MAIN_ROWS]  # the first seed whole
    assert tasks[6:14] == [(m, sd) for sd in (1, 2) for m in ("sft", "self-distill", "self-distill-base-teacher",
                                                               "freeze")]
    assert tasks[14:16] == [("self-distill-l0.3", 0), ("self-distill-l3", 0)]
    assert set(tasks[16:]) == {(m, sd) for sd in (1, 2) for m in ("sft-abstain", "sft-rollback")}


def _table_settings():
    from types import SimpleNamespace

    from bench.hallucination_table import METHODS, settings

    args = SimpleNamespace(quick=False, device="cpu", methods=",".join(METHODS), sweep=True, seeds=1, steps=0,
                           eval_interval=0, lr=1e-4, unknown_share=0.5, model="bundled://smollm2-135m-instruct",
                           facts="bundled://facts", sweep_seeds=1, ds_optimizer="torch", budget_seconds=0, jobs=1,
                           max_facts=0)
    mix = {"files": {"train": "/data/train.jsonl", "known": "/data/known.jsonl", "unknown": "/data/unknown.jsonl"}}
    return settings(args), mix


def test_every_table_row_is_a_valid_finetunejob():
    """Each row's manifest passes the product's own validation (a λ of 0.3 once made an invalid name)."""
    from bench.hallucination_table import METHODS, manifest
    from tuneguard.validation import parse_job

    s, mix = _table_settings()
    for m in METHODS:
        job = parse_job(manifest(m, 0, s, mix, "cpu"))
        assert job.spec.training.max_steps == s["steps"], m


def test_a_finished_run_is_reused_only_for_the_same_manifest_and_code(tmp_path):
    import yaml

    from bench.hallucination_table import CODE_FILE, code_digest, finished_report, manifest

    s, mix = _table_settings()
    run = tmp_path / "sft-s0"
    run.mkdir()
    (run / "manifest.yaml").write_text(yaml.safe_dump(manifest("sft", 0, s, mix, "cpu"), sort_keys=False))
    (run / "report.json").write_text('{"final": {}}')
    assert finished_report("sft", 0, s, mix, "cpu", tmp_path) is None  # no code digest: made by unknown code
    (run / CODE_FILE).write_text(code_digest())
    assert finished_report("sft", 0, s, mix, "cpu", tmp_path) == {"final": {}}
    (run / CODE_FILE).write_text("0" * 16)
    assert finished_report("sft", 0, s, mix, "cpu", tmp_path) is None  # another code
    (run / CODE_FILE).write_text(code_digest())
    assert finished_report("sft", 0, dict(s, steps=s["steps"] + 1), mix, "cpu", tmp_path) is None  # another manifest
