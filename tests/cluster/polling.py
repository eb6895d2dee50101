"""The tests' one polling helper. Every wait goes through wait_for, so each says what it awaited, for how
long, and what it saw last, and none is a bare sleep. It lives here because tests/e2e and tests/prometheus
build on tests/cluster (and the control plane's own start-up waits use it too)."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """wait_for gave up: the message names what was awaited, the timeout, and what was seen last."""


def wait_for(what: str, check: Callable[[], T], timeout: float = 60, interval: float = 0.3, *,
             retry: type[BaseException] | tuple[type[BaseException], ...] = (),
             describe: Callable[[], str] | None = None) -> T:
    """Calls check() every `interval` seconds until it returns something truthy, and returns that value.

    check runs at least once, and once more after the deadline before giving up. An exception from check
    propagates at once (that is how a check fails fast, e.g. when the awaited process died), except those
    in `retry`, which count as "not yet" (OSError while a server is not listening). On timeout: WaitTimeout
    with `what`, the timeout, the last value or exception check gave, and describe() (state worth showing,
    e.g. a log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except retry as e:
            last: object = e
        else:
            if result:
                return result
            last = result
        if time.monotonic() > deadline:
            more = f"\n{describe()}" if describe else ""
            raise WaitTimeout(f"timed out after {round(timeout, 2):g}s waiting for {what}; last seen: {last!r}{more}")
        time.sleep(interval)
