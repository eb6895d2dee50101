"""Fixtures of the operator's end-to-end tests: one real operator process per test module."""

from __future__ import annotations

import pytest

from .harness import REPO, Kubectl, OperatorProcess, wait_for

CRD_PATH = REPO / "crds" / "tuneguard.io_finetunejobs.yaml"


@pytest.fixture(scope="session")
def crd_installed(cluster):
    """Overrides tests/conftest.py's: `kubectl wait --for=condition=Established` right after the apply
    fails at once (instead of waiting) when the CRD has no status.conditions yet; poll instead."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'
    wait_for("the FineTuneJob CRD to be Established",
             lambda: cluster.kubectl("get", "crd", "finetunejobs.tuneguard.io", "-o", f"jsonpath={jsonpath}",
                                     check=False).stdout.strip() == "True", 60)
    return "finetunejobs.tuneguard.io"


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
