"""Two real operator processes with --leader-elect on one control plane: only the leader reconciles, the
standby takes over within the lease duration when the leader is SIGKILLed, and no job's children are
duplicated on the way."""

from __future__ import annotations

import time

import pytest

from tuneguard import contract

from .harness import OperatorProcess, cpu_job, wait_for
from .test_operator import children, expected_children

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

LEASE = ("--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.5")


def leads(op: OperatorProcess) -> bool:
    return f"{contract.OP_LEADER} 1.0" in op.metrics()


def test_the_standby_takes_over_when_the_leader_dies(cluster, crd_installed, kc, namespace, tmp_path):
    args = ("--all-namespaces", "--leader-elect", "--leader-election-namespace", namespace, *LEASE)
    ops = [OperatorProcess(cluster, tmp_path / f"op{i}", args) for i in range(2)]
    for i, op in enumerate(ops):
        (tmp_path / f"op{i}").mkdir()
        op.start()  # both healthy: the standby serves /healthz while it waits
    try:
        leader = wait_for("one leader", lambda: next((op for op in ops if leads(op)), None), 30)
        standby = next(op for op in ops if op is not leader)
        assert not leads(standby)
        kc.apply(cpu_job("before"), namespace)
        kc.wait_phase("before", namespace, "Running", 60)
        assert "before" in leader.tail(400) and "before" not in standby.tail(400)  # only the leader reconciled

        leader.stop(kill=True)  # SIGKILL: no release, the standby must wait the lease out
        t0 = time.monotonic()
        wait_for("the standby to lead", lambda: leads(standby), 30)
        took = time.monotonic() - t0
        assert took <= 4 + 3, took  # the lease duration, plus a retry period and a slow round
        kc.apply(cpu_job("after"), namespace)
        kc.wait_phase("after", namespace, "Running", 60)
        for name in ("before", "after"):  # nothing duplicated by the handover
            assert children(kc, name, namespace) == expected_children(name)
        lease = kc.get("lease", "tuneguard-operator", "-n", namespace)["spec"]
        assert lease["leaseTransitions"] == 1 and lease["holderIdentity"].endswith(f"_{standby.proc.pid}")
        print(f"\nstandby took over {took:.1f} s after the leader's SIGKILL (lease duration 4 s)")
    finally:
        for op in ops:
            op.stop()
