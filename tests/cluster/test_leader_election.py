"""Leader election (tuneguard_operator.leader) on a real Lease of the test API server: one leader at a time,
takeover only after the lease duration (or at once after a release), and a leader that cannot reach the API
server stops before its lease runs out."""

from __future__ import annotations

import threading
import time

import pytest

from tests.cluster.polling import wait_for
from tuneguard.kube import Kube, path
from tuneguard_operator.leader import ElectionSettings, LeaderElector

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120, func_only=True)]

FAST = dict(lease_duration=3.0, renew_deadline=2.0, retry_period=0.5)


@pytest.fixture
def kube(cluster):
    with cluster.api_client() as c:
        yield Kube(c)


def _pair(kube, namespace, name):
    return [LeaderElector(kube, ElectionSettings(namespace, name, identity=who, **FAST)) for who in ("a", "b")]


def test_one_leader_and_takeover_only_after_the_lease_duration(kube, module_namespace):
    a, b = _pair(kube, module_namespace, "lease-takeover")
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    for _ in range(3):  # a renews; b keeps standing by
        time.sleep(0.5)
        assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert b.holder == "a"
    t0 = time.monotonic()  # a stops renewing: b takes over once it has seen no renewal for 3 s
    wait_for("b to take the lease over", b.try_acquire_or_renew, 30, interval=0.1)
    waited = time.monotonic() - t0
    assert FAST["lease_duration"] - 0.6 <= waited <= FAST["lease_duration"] + 1.0, waited
    lease = kube.get(path("Lease", module_namespace, "lease-takeover"))["spec"]
    assert lease["holderIdentity"] == "b" and lease["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew() and a.holder == "b"  # the old leader sees it lost


def test_candidates_racing_for_a_new_lease_make_one_leader(kube, module_namespace):
    for i in range(8):
        electors = [LeaderElector(kube, ElectionSettings(module_namespace, f"race-{i}", identity=f"c{j}", **FAST))
                    for j in range(3)]
        won, go = [], threading.Barrier(len(electors))

        def attempt(e):
            go.wait()
            if e.try_acquire_or_renew():
                won.append(e.s.identity)

        threads = [threading.Thread(target=attempt, args=(e,)) for e in electors]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert kube.get(path("Lease", module_namespace, f"race-{i}"))["spec"]["holderIdentity"] == won[0]


def test_a_released_lease_is_taken_at_once(kube, module_namespace):
    a, b = _pair(kube, module_namespace, "lease-release")
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    a.release()
    assert b.try_acquire_or_renew()  # no lease duration to wait out


def test_a_leader_cut_off_from_the_api_server_stops_before_its_lease_runs_out(cluster, kube, module_namespace):
    from kubernetes import client as k8s

    from tests.cluster.processes import free_port

    a, b = _pair(kube, module_namespace, "lease-cut-off")
    assert a.try_acquire_or_renew()
    # a's connection now leads nowhere: the same elector state, its API server unreachable
    cfg = k8s.Configuration()
    cfg.host = f"https://127.0.0.1:{free_port()}"
    a.kube = Kube(k8s.ApiClient(cfg), timeout=0.5)
    lost = threading.Event()
    t0 = time.monotonic()
    a.keep_leading(threading.Event(), on_lost=lost.set)
    assert lost.wait(10)
    stopped = time.monotonic() - t0
    wait_for("b to take the lease over", b.try_acquire_or_renew, 30, interval=0.1)
    taken = time.monotonic() - t0
    assert stopped < FAST["lease_duration"] <= taken + 0.6, (stopped, taken)  # a stopped before b could lead


def test_a_leader_that_stops_renewing_and_releases_stays_released(kube, module_namespace):
    """The operator's clean stop: its renewal thread stopped first, then the release, which nothing takes back."""
    a, b = _pair(kube, module_namespace, "lease-clean-stop")
    assert a.try_acquire_or_renew()
    renewing = threading.Event()
    a.keep_leading(renewing, on_lost=lambda: None)
    time.sleep(1.2)  # a couple of renewals
    renewing.set()
    a.release()
    time.sleep(3 * FAST["retry_period"])
    assert kube.get(path("Lease", module_namespace, "lease-clean-stop"))["spec"]["holderIdentity"] == ""
    assert b.try_acquire_or_renew()
