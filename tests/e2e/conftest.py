"""Fixtures of the operator's end-to-end tests: one real operator process per test module."""

from __future__ import annotations

import time

import pytest

from .harness import Kubectl, OperatorProcess, wait_for


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


@pytest.fixture
def gpus_free(kc):
    """For a test that needs whole GPU nodes: waits until no pod holds a GPU. A namespace's teardown waits
    for its Job pods only so long (tests/conftest.py), and fixtures with namespaces of their own do not;
    the holders are named if they never go."""
    t0, first = time.monotonic(), kc.gpu_holders()
    wait_for("no pod to hold GPUs", lambda: not kc.gpu_holders(), 180, interval=1.0,
             describe=lambda: "; ".join(kc.gpu_holders()))
    if first:
        print(f"waited {time.monotonic() - t0:.0f}s for GPUs held by: {'; '.join(first)}")
