"""tests.cluster.polling.wait_for, the tests' one polling helper."""

from __future__ import annotations

import pytest

from tests.cluster.polling import WaitTimeout, wait_for


def answers(*values):
    """A check that gives `values` one per call (an exception instance is raised), then keeps the last."""
    calls = []

    def check():
        calls.append(1)
        value = values[min(len(calls), len(values)) - 1]
        if isinstance(value, BaseException):
            raise value
        return value

    check.calls = calls
    return check


def test_returns_the_first_truthy_value():
    check = answers(None, [], {"phase": "Running"})
    assert wait_for("a phase", check, timeout=5, interval=0) == {"phase": "Running"}
    assert len(check.calls) == 3


def test_the_timeout_names_what_how_long_and_the_last_value_seen():
    with pytest.raises(WaitTimeout) as e:
        wait_for("the workers to stop", answers(0, ""), timeout=0.05, interval=0.01,
                 describe=lambda: "2 pods left")
    assert isinstance(e.value, AssertionError)
    assert str(e.value) == "timed out after 0.05s waiting for the workers to stop; last seen: ''\n2 pods left"


def test_a_check_made_after_the_deadline_still_counts():
    check = answers(False, True)  # the second call comes after the deadline: the sleep outlasts it
    assert wait_for("a second look", check, timeout=0.02, interval=0.05) is True
    assert len(check.calls) == 2


def test_retried_exceptions_count_as_not_yet_and_are_reported():
    assert wait_for("a server", answers(ConnectionRefusedError(111, "refused"), "up"), 5, 0, retry=OSError) == "up"
    with pytest.raises(WaitTimeout, match=r"last seen: ConnectionRefusedError\(111, 'refused'\)"):
        wait_for("a server", answers(ConnectionRefusedError(111, "refused")), 0.02, 0.01, retry=OSError)


def test_other_exceptions_fail_at_once():
    check = answers(RuntimeError("the operator exited"), True)
    with pytest.raises(RuntimeError, match="the operator exited"):
        wait_for("the operator's /healthz", check, 5, 0, retry=OSError)
    assert len(check.calls) == 1
