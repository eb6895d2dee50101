"""fact_stage.decide_evaluation: what one evaluation decides (new best, stop, rollback), one row per rule."""

from __future__ import annotations

import pytest

from tuneguard import api
from tuneguard_trainer.fact_stage import TrainState, decide_evaluation

LOSS = api.EarlyStoppingSpec(enabled=True, metric="eval_loss", patience=2)
NO_EARLY_STOP = api.EarlyStoppingSpec(enabled=False, metric="eval_loss")


def state(best_loss=None, no_improve=0) -> TrainState:
    st = TrainState()
    if best_loss is not None:
        st.best = {"step": 2, "figures": {"eval_loss": best_loss}, "monitored": -best_loss}
        st.best_monitored = -best_loss
    st.no_improve = no_improve
    return st


@pytest.mark.parametrize("name, st, loss, breaches, es, action, want", [
    ("first evaluation is the best", state(), 1.0, [], LOSS, "warn",
     dict(new_best=True, stop=False, rollback=False, no_improve=0, best_monitored=-1.0)),
    ("a lower loss is a new best and resets patience", state(1.0, no_improve=1), 0.5, [], LOSS, "warn",
     dict(new_best=True, stop=False, no_improve=0, best_monitored=-0.5)),
    ("no improvement counts toward patience", state(0.5), 0.6, [], LOSS, "warn",
     dict(new_best=False, stop=False, no_improve=1, best_monitored=-0.5)),
    ("patience spent stops, no rollback", state(0.5, no_improve=1), 0.6, [], LOSS, "warn",
     dict(new_best=False, stop=True, rollback=False, no_improve=2,
          why="early stopping: eval_loss did not improve for 2 evaluations")),
    ("early stopping off never stops", state(0.5, no_improve=5), 0.6, [], NO_EARLY_STOP, "warn",
     dict(stop=False, no_improve=6)),
    ("warn: a breached evaluation may still be the best, outside the budget", state(1.0), 0.5, ["h +0.2"], LOSS,
     "warn", dict(new_best=True, within=False, stop=False, rollback=False)),
    ("stop: a breach is never the best, and stops", state(1.0), 0.5, ["h +0.2"], LOSS, "stop",
     dict(new_best=False, within=False, stop=True, rollback=False, why="guardrail stop: h +0.2")),
    ("rollback: stops and rolls back", state(1.0), 0.5, ["h +0.2", "kl 3"], LOSS, "rollback",
     dict(new_best=False, stop=True, rollback=True, why="guardrail rollback: h +0.2; kl 3")),
    ("a guardrail's reason wins over early stopping's", state(0.5, no_improve=1), 0.6, ["h"], LOSS, "stop",
     dict(stop=True, why="guardrail stop: h")),
    ("no monitored figure: no best, patience untouched", state(0.5, no_improve=1), None, [], LOSS, "warn",
     dict(new_best=False, monitored=None, no_improve=1, best_monitored=-0.5, stop=False)),
])
def test_decide_evaluation(name, st, loss, breaches, es, action, want):
    before = st.to_dict()
    got = decide_evaluation(st, {"eval_loss": loss}, breaches, es, action)
    assert {k: got[k] for k in want} == want, name
    assert st.to_dict() == before  # pure: every rank applies the broadcast decision itself


def test_higher_is_better_for_accuracies():
    es = api.EarlyStoppingSpec(enabled=True, metric="known_accuracy", patience=1)
    st = TrainState()
    first = decide_evaluation(st, {"known_accuracy": 0.8}, [], es, "warn")
    st.best, st.best_monitored = {"monitored": first["monitored"]}, first["best_monitored"]
    assert decide_evaluation(st, {"known_accuracy": 0.9}, [], es, "warn")["new_best"] is True
    worse = decide_evaluation(st, {"known_accuracy": 0.7}, [], es, "warn")
    assert worse["new_best"] is False and worse["stop"] is True
