"""The offline validator and the real API server agree on generated manifests (tests/fuzz_manifests.py):
both accept, or both reject naming the same field; and what the server accepts and defaults, the validator
accepts too. TUNEGUARD_FUZZ_MANIFESTS sets how many (default 300; a fixed seed, so CI sees the same ones;
TUNEGUARD_FUZZ_RANDOM=1 draws new ones)."""

from __future__ import annotations

import collections
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests import fuzz_manifests as fuzz
from tuneguard import api

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1800, func_only=True)]

COUNT = int(os.environ.get("TUNEGUARD_FUZZ_MANIFESTS", "300"))
RANDOM = os.environ.get("TUNEGUARD_FUZZ_RANDOM") == "1"  # new manifests each run (exploring), not CI's fixed ones


def server_verdict(objects, namespace: str, doc: dict) -> tuple[bool, str, list[str], dict]:
    """(accepted, the server's message, the fields it names, the object it would store) for a dry-run create
    with strict field validation, as kubectl sends it."""
    from kubernetes.client.rest import ApiException

    try:
        stored = objects.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.PLURAL, doc,
                                                         dry_run="All", field_validation="Strict")
        return True, "", [], stored
    except ApiException as e:
        if e.status not in (400, 422):
            raise
        body = json.loads(e.body or "{}")
        fields = [c.get("field", "").lstrip(".") for c in (body.get("details") or {}).get("causes") or []]
        return False, body.get("message", e.reason or ""), [f for f in fields if f], {}


def same_field(offline: list[str], message: str, fields: list[str]) -> bool:
    """Some offline path is named by the server, or lies under a field the server names."""
    return any(p in message or any(p.startswith(f) or f.startswith(p) for f in fields) for p in offline)


def test_offline_and_server_verdicts_agree(cluster, crd_installed, module_namespace):
    from kubernetes import client as k8s

    tally: collections.Counter = collections.Counter()
    with cluster.api_client() as c:
        objects = k8s.CustomObjectsApi(c)

        @settings(max_examples=COUNT, deadline=None, derandomize=not RANDOM, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(fuzz.manifests())
        def check(case):
            doc, mutations = case
            ok_offline, paths, offline_only = fuzz.offline_verdict(doc)
            ok_server, message, fields, stored = server_verdict(objects, module_namespace, doc)
            what = f"mutations {mutations}\noffline: {paths or 'accepted'}\nserver: {message or 'accepted'}"
            if offline_only and ok_server:
                tally["offline only (regex syntax)"] += 1
                return
            tally["accepted" if ok_server else "rejected"] += 1
            assert ok_offline == ok_server, what
            if not ok_offline:
                assert same_field(paths, message, fields), what
            else:  # the server's defaults are the models' own: the stored spec validates offline
                again, again_paths, _ = fuzz.offline_verdict({**doc, "spec": stored["spec"]})
                assert again, f"{what}\nthe server-defaulted spec fails offline: {again_paths}"

        check()
    print(f"\nfuzzed manifests: {sum(tally.values())} ({dict(tally)}), disagreements: 0")
    assert tally["accepted"] and tally["rejected"]  # the generator reaches both sides
