"""Fixtures of the operator's end-to-end tests: one real operator process per test module."""

from __future__ import annotations

import pytest

from .harness import Kubectl, OperatorProcess


@pytest.fixture(scope="module")
def kc(cluster) -> Kubectl:
    return Kubectl(cluster)


@pytest.fixture(scope="module")
def operator(cluster, crd_installed, tmp_path_factory, request):
    """`tuneguard operator --all-namespaces` running against the test cluster for the whole module.
    Its log is printed when a test of the module failed."""
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop()
    if request.session.testsfailed:
        print(f"\n--- operator log (last lines) ---\n{op.tail(80)}")
