"""Shared fixtures. Cluster tests (marked `cluster`) take `cluster`: the real local control plane
from tests.cluster, started once per session in its own temporary state dir (so two test runs on one
machine never collide) and stopped at the end; or, when KUBECONFIG is set, that cluster, untouched.
Cluster tests set their timeouts with func_only=True: the fixture's set-up may include the first
build of the binaries (about 25 minutes on a fresh 2-core machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.cluster.polling import WaitTimeout, wait_for

REPO = Path(__file__).resolve().parent.parent
CRD_PATH = REPO / "crds" / "tuneguard.io_finetunejobs.yaml"
STATE_PREFIX = "tuneguard-cluster-"


def _wants_real_node(session) -> bool:
    return any(item.get_closest_marker("real_node") for item in session.items)


@pytest.fixture(scope="session")
def cluster(request):
    """A tests.cluster.Cluster: .kubeconfig, .kubectl(...), .helm(...), .api_client(), .env,
    .binary(name), .finish_pod(ns, pod, exit_code), .simulated, .real_node. The real node
    (tests.cluster.real_node: kubelet + containerd beside the kwok nodes) is started only when a
    collected test is marked `real_node`."""
    from tests.cluster import Cluster, LocalControlPlane
    from tests.cluster.control_plane import remove_stale_state_dirs
    from tests.cluster.binaries import control_plane_binaries, kubectl_binary

    if os.environ.get("KUBECONFIG"):
        # Someone else's cluster (or one from `make cluster-up`): start nothing, stop nothing.
        if os.pathsep in os.environ["KUBECONFIG"]:
            pytest.fail("KUBECONFIG must name a single file for the tests (they hand it to other tools)")
        try:
            tools = control_plane_binaries(["helm"])
        except RuntimeError:
            tools = {"kubectl": kubectl_binary()}  # helm then comes from PATH, if anywhere
        yield Cluster.from_kubeconfig(Path(os.environ["KUBECONFIG"]), tools)
        return

    remove_stale_state_dirs(Path(tempfile.gettempdir()), STATE_PREFIX)
    state = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    # die_with_parent: the kernel kills the control plane if pytest itself is killed (no leftovers).
    plane = LocalControlPlane(state, die_with_parent=True, real_node=_wants_real_node(request.session))
    # SIGTERM (CI cancelling a job) would skip fixture teardown; as KeyboardInterrupt it runs.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    keep = os.environ.get("TUNEGUARD_KEEP_CLUSTER_STATE") == "1"
    try:
        started = plane.start()  # on failure it has stopped its processes and kept the logs it names
    except BaseException:
        signal.signal(signal.SIGTERM, previous)
        raise
    try:
        yield started
    finally:
        plane.stop(keep_state=keep)
        signal.signal(signal.SIGTERM, previous)
        if keep:
            print(f"\ncontrol-plane state and logs kept in {state}")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def fresh_namespace(cluster):
    """A new namespace with its default ServiceAccount (pods need it); deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(f"the default ServiceAccount in {name}", lambda: cluster.kubectl(
        "get", "serviceaccount", "default", "-n", name, "--ignore-not-found", "-o", "name").stdout.strip(),
        30, interval=0.2)
    try:
        yield name
    finally:
        _delete_workloads(cluster, name)
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _delete_workloads(cluster, ns: str, timeout: float = 90) -> None:
    """Deletes a namespace's FineTuneJobs and Jobs and waits (bounded) for their pods to go. Deleting the
    namespace alone leaves kwok's pods of podFailurePolicy Jobs Terminating for minutes (they never turn
    terminal, so the Job controller keeps its finalizer), holding the GPUs that later tests need."""
    def pods() -> list[str]:  # those a finalizer can hold (the Job controller's); bare pods go with the namespace
        out = cluster.kubectl("get", "pods", "-n", ns, "-o", "jsonpath={.items[*].metadata.finalizers}",
                              check=False).stdout
        return out.split()
    if not pods():
        return
    for kind in ("finetunejobs", "jobs"):
        cluster.kubectl("delete", kind, "--all", "-n", ns, "--wait=false", check=False)
    with contextlib.suppress(WaitTimeout):  # bounded: the namespace's deletion takes what is left
        wait_for(f"the pods of {ns}'s Jobs to go", lambda: not pods(), timeout, interval=0.5)


@pytest.fixture
def namespace(cluster):
    """A fresh namespace for one test."""
    with fresh_namespace(cluster) as name:
        yield name


@pytest.fixture(scope="module")
def module_namespace(cluster):
    """A fresh namespace shared by the tests of one module."""
    with fresh_namespace(cluster) as name:
        yield name


@pytest.fixture(scope="session")
def crd_installed(cluster):
    """The FineTuneJob CRD from crds/, applied server-side and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    # Poll rather than `kubectl wait --for=condition=Established`: that fails at once, instead of
    # waiting, while a just-created CRD has no status.conditions yet.
    jsonpath = '{.status.conditions[?(@.type=="Established")].status}'

    def established() -> str:
        return cluster.kubectl("get", "crd", "finetunejobs.tuneguard.io", "-o", f"jsonpath={jsonpath}",
                               check=False).stdout.strip()

    wait_for("the FineTuneJob CRD to be Established", lambda: established() == "True", 60, interval=0.2,
             describe=lambda: f"Established={established()!r}")
    return "finetunejobs.tuneguard.io"


@pytest.fixture(scope="session")
def real_node(cluster):
    """The real node of our control plane (tests.cluster.real_node.RealNode). Tests marked
    `real_node` take it; with KUBECONFIG naming another cluster they are skipped (their images cannot
    be loaded into that cluster's runtime from here)."""
    if cluster.real_node is None:
        pytest.skip("no real node: the cluster comes from KUBECONFIG (the real-node tests need ours)")
    return cluster.real_node
