"""The operator on fuzzed manifests the API server accepts (tests/fuzz_manifests.py): it never crashes and never
loops. Each of TUNEGUARD_FUZZ_OPERATOR_JOBS (default 40; a fixed seed unless TUNEGUARD_FUZZ_RANDOM=1) accepted
manifests, created for real, gets a phase; the operator stays up with no reconcile errors; and once they have
settled, a quiet window sees no hot loop: no more reconciles per job than the 10 s poll of a waiting job makes, and
status rewritten for at most a quarter of the jobs (a waiting job's message may change)."""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings

from tests import fuzz_manifests as fuzz
from tuneguard import api

from .harness import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

COUNT = int(os.environ.get("TUNEGUARD_FUZZ_OPERATOR_JOBS", "40"))
RANDOM = os.environ.get("TUNEGUARD_FUZZ_RANDOM") == "1"  # new manifests each run (exploring), not CI's fixed ones
QUIET_SECONDS = 20.0


def accepted_manifests(k: int) -> list[dict]:
    """k generated manifests the offline validator accepts (or refuses only for a regex the server cannot check:
    the operator must fail those itself), renamed fuzz-NNN."""
    found: list[dict] = []

    @settings(max_examples=k * 8, deadline=None, derandomize=not RANDOM, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fuzz.manifests())
    def collect(case):
        doc, _ = case
        ok, _, offline_only = fuzz.offline_verdict(doc)
        if len(found) < k and (ok or offline_only):
            doc["metadata"] = {"name": f"fuzz-{len(found):03d}"}
            found.append(doc)

    collect()
    assert len(found) == k, f"only {len(found)} accepted manifests in {k * 8} tries"
    return found


def metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


def test_the_operator_never_crashes_or_loops_on_accepted_fuzzed_manifests(operator, cluster, namespace):
    from kubernetes import client as k8s
    from kubernetes.client.rest import ApiException

    docs = accepted_manifests(COUNT)
    errors0 = metric(operator.metrics(), "tuneguard_operator_reconcile_errors_total")
    with cluster.api_client() as c:
        objects = k8s.CustomObjectsApi(c)
        created = []
        for doc in docs:
            try:
                objects.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, doc)
                created.append(doc["metadata"]["name"])
            except ApiException as e:  # the server may still refuse (e.g. a CEL cost limit): not this test's case
                assert e.status in (400, 422), e

        def listing():
            return {o["metadata"]["name"]: o for o in objects.list_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL)["items"]}

        def phased():
            items = listing()
            return all((items.get(n, {}).get("status") or {}).get("phase") for n in created) and items

        items = wait_for(f"all {len(created)} fuzzed jobs to get a phase", phased, 120, interval=1.0)
        phases: dict[str, int] = {}
        for o in items.values():
            phases[o["status"]["phase"]] = phases.get(o["status"]["phase"], 0) + 1
        time.sleep(5.0)  # the first worker Job events settle
        before, m_before = {n: o["metadata"]["resourceVersion"] for n, o in listing().items()}, operator.metrics()
        time.sleep(QUIET_SECONDS)
        after, m_after = listing(), operator.metrics()

    assert operator.healthy(), operator.tail()
    failed = [line for line in operator.log_text().splitlines() if "reconcile of" in line and "failed" in line]
    assert metric(m_after, "tuneguard_operator_reconcile_errors_total") == errors0, "\n".join(failed[:5])
    count = "tuneguard_operator_reconcile_duration_seconds_count"
    reconciles = metric(m_after, count) - metric(m_before, count)
    # A job waiting on something no event announces is looked at every 10 s (observed.STUCK_POLL_SECONDS).
    assert reconciles <= len(created) * (QUIET_SECONDS / 10.0 + 1), (reconciles, phases)
    rewritten = [n for n, o in after.items() if o["metadata"]["resourceVersion"] != before.get(n)]
    assert len(rewritten) <= len(created) // 4, (rewritten, phases)
    print(f"\nfuzzed jobs created: {len(created)} of {len(docs)}, phases {phases}; over {QUIET_SECONDS:.0f} s quiet: "
          f"{reconciles:g} reconciles, {len(rewritten)} status writes; operator up, reconcile errors 0")
