"""A real Kubernetes control plane on loopback: etcd, kube-apiserver (TLS, RBAC, ServiceAccount tokens,
default admission plugins), kube-controller-manager, kube-scheduler, and kwok simulating GPU nodes.

    plane = LocalControlPlane(state_dir, die_with_parent=True)
    cluster = plane.start()        # -> Cluster handle: kubeconfig, kubectl(), api_client(), finish_pod()
    ...
    plane.stop()                   # stops every process and removes state_dir
"""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from .binaries import COMPONENTS, NODE_COMPONENTS, control_plane_binaries
from .handle import SIMULATE_EXIT_ANNOTATION, SIMULATION_MARKER, Cluster
from .nodes import KWOK_NODE_ANNOTATION, gpu_node
from .pki import APISERVER_SANS, KeyPair, Pki, write_kubeconfig
from .polling import WaitTimeout, wait_for
from .processes import PortTaken, ProcessGroup, free_port

STAGES = Path(__file__).with_name("kwok-stages.yaml")
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"


class StartupError(RuntimeError):
    pass


class _Rest:
    """Just enough of a client for start-up checks, with the standard library (fast to import)."""

    def __init__(self, server: str, ca: Path, client: KeyPair):
        self.server = server
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.load_cert_chain(str(client.cert), str(client.key))

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=5) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")


class LocalControlPlane:
    def __init__(self, state_dir: Path, *, die_with_parent: bool, gpu_nodes: int = 2,
                 kubeconfig: Path | None = None, real_node: bool = False, audit: bool = False):
        self.state_dir = Path(state_dir).resolve()
        # The API server's audit log (Metadata level, JSON lines) at audit_log: who made which request, for the
        # benchmarks that count an operator's requests by its user agent.
        self.audit_log = self.state_dir / "audit.log" if audit else None
        self.kubeconfig = kubeconfig or self.state_dir / "kubeconfig"
        self.gpu_nodes = gpu_nodes
        self.die_with_parent = die_with_parent
        self.real_node = real_node  # also start tests.cluster.real_node (kubelet + containerd) beside kwok
        self.node = None
        self.group: ProcessGroup | None = None

    # ------------------------------------------------------------------------------------ start
    def start(self, timeout: float = 90.0) -> Cluster:
        """Starts everything and returns once the cluster is usable: API server ready, GPU nodes
        Ready, the default ServiceAccount present. Stops what it started if anything fails."""
        if (self.state_dir / "pids").exists():
            raise StartupError(f"{self.state_dir} already holds a running control plane (pids file present)")
        bins = control_plane_binaries(COMPONENTS + (NODE_COMPONENTS if self.real_node else ()))
        for attempt in range(3):
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self.group = ProcessGroup(self.state_dir, die_with_parent=self.die_with_parent)
            try:
                return self._start(bins, time.monotonic() + timeout)
            except PortTaken:
                self.stop()  # a free port we picked was taken meanwhile: start afresh on new ports
                if attempt == 2:
                    raise
            except BaseException:
                self.stop(keep_state=True)
                raise

    def _start(self, bins: dict[str, Path], deadline: float) -> Cluster:
        s, g = self.state_dir, self.group
        pki = Pki(s / "pki")
        node_sans, node_flags = [], []
        if self.real_node:
            from .real_node import RealNode

            self.node = RealNode(pki, bins)
            node_sans, node_flags = self.node.prepare()  # lock, clean machine, bridge (the node's address)
        serving = pki.issue("apiserver", "/CN=kube-apiserver", server_sans=APISERVER_SANS + node_sans)
        admin = pki.issue("admin", "/O=system:masters/CN=tuneguard-admin")
        # The bootstrap RBAC policy grants these two users exactly what their components need.
        kcm = pki.issue("controller-manager", "/CN=system:kube-controller-manager")
        scheduler = pki.issue("scheduler", "/CN=system:kube-scheduler")
        sa = pki.signing_key("sa")

        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        server = f"https://127.0.0.1:{api_port}"
        g.start("etcd", bins["etcd"], [
            "--name=default", f"--data-dir={s / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true",  # throw-away data: skip fsyncs, which dominate etcd latency on CI disks
            "--log-level=warn",
        ])
        if self.real_node:
            from .real_node import NODE_IP

            # Pods reach the API server at the node's address, through the `kubernetes` Service (its
            # Endpoints kept by the default lease reconciler) and kube-proxy.
            listen = ["--bind-address=0.0.0.0", f"--advertise-address={NODE_IP}", *node_flags]
        else:
            # Loopback addresses are not valid Endpoints: don't publish one for the `kubernetes` Service.
            listen = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        g.start("kube-apiserver", bins["kube-apiserver"], [
            f"--etcd-servers=http://127.0.0.1:{etcd_port}", *listen, f"--secure-port={api_port}",
            f"--tls-cert-file={serving.cert}", f"--tls-private-key-file={serving.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={sa.cert}", f"--service-account-signing-key-file={sa.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--cert-dir={s / 'apiserver-certs'}", "--profiling=false", *self._audit_flags(s),
        ])
        # Started together: the API server retries etcd while it initialises (a second saved).
        self._wait("etcd to become healthy", deadline,
                   lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"))
        rest = _Rest(server, pki.ca.cert, admin)
        self._api_ready = lambda: _rest_ok(rest, "/readyz")
        self._wait("kube-apiserver /readyz", deadline, self._api_ready)

        write_kubeconfig(self.kubeconfig, server=server, ca=pki.ca.cert, user="tuneguard-admin", client=admin)
        kcm_config = write_kubeconfig(s / "controller-manager.kubeconfig", server=server, ca=pki.ca.cert,
                                      user="system:kube-controller-manager", client=kcm)
        scheduler_config = write_kubeconfig(s / "scheduler.kubeconfig", server=server, ca=pki.ca.cert,
                                            user="system:kube-scheduler", client=scheduler)
        g.start("kube-controller-manager", bins["kube-controller-manager"], [
            f"--kubeconfig={kcm_config}", "--leader-elect=false", "--secure-port=0",
            "--use-service-account-credentials=true",  # each controller acts as its own ServiceAccount
            f"--service-account-private-key-file={sa.key}", f"--root-ca-file={pki.ca.cert}",
            f"--cluster-signing-cert-file={pki.ca.cert}", f"--cluster-signing-key-file={pki.ca.key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Its start-up makes ~100 requests (a ServiceAccount and a token per controller): at the
            # default 20 requests/s client limit that alone takes 5 s.
            "--kube-api-qps=500", "--kube-api-burst=1000",
        ])
        g.start("kube-scheduler", bins["kube-scheduler"], [
            f"--kubeconfig={scheduler_config}", "--leader-elect=false", "--secure-port=0",
        ])
        g.start("kwok", bins["kwok"], [
            f"--kubeconfig={self.kubeconfig}", f"--config={STAGES}",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            "--node-lease-duration-seconds=40",  # kwok renews node Leases, so nodes stay Ready
            f"--cidr={POD_CIDR}",
        ])

        node_names = [f"kwok-gpu-{i}" for i in range(self.gpu_nodes)]
        for i, name in enumerate(node_names):
            _created(rest.call("POST", "/api/v1/nodes", gpu_node(name, f"10.0.0.{i + 10}")), f"node {name}")
        _created(rest.call("POST", "/api/v1/namespaces/kube-public/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": SIMULATION_MARKER},
            "data": {"nodes": ",".join(node_names), "finishPodAnnotation": SIMULATE_EXIT_ANNOTATION},
        }), "simulation marker")

        self._wait(f"nodes {', '.join(node_names)} to become Ready (kwok)", deadline,
                   lambda: all(_node_ready(rest, n) for n in node_names))
        self._wait("the default ServiceAccount (kube-controller-manager)", deadline,
                   lambda: rest.call("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200)
        if self.node is not None:
            node_deadline = time.monotonic() + 600  # includes the pause image's first build
            self.node.start(g, api_port, self.kubeconfig,
                            lambda what, ready: self._wait(what, node_deadline, ready, interval=0.5))
        return Cluster(kubeconfig=self.kubeconfig, binaries=bins, simulated=True, real_node=self.node,
                       control_plane=self)

    def _audit_flags(self, s: Path) -> list[str]:
        if self.audit_log is None:
            return []
        policy = s / "audit-policy.yaml"
        policy.write_text("apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n"
                          "rules:\n- level: Metadata\n")
        # batch mode: the log is written behind the requests, so it adds no latency to them
        return [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-format=json",
                "--audit-log-mode=batch", "--audit-log-maxsize=0"]

    def restart(self, *names: str, down_seconds: float = 2.0, timeout: float = 60.0) -> None:
        """An outage: stops the named components (e.g. "etcd", "kube-apiserver"), keeps them down for
        down_seconds, starts them again with the same flags and data, and waits for /readyz."""
        for name in names:
            self.group.restart(name, down_seconds=down_seconds)
        self._wait("kube-apiserver /readyz after the restart", time.monotonic() + timeout, self._api_ready)

    def _wait(self, what: str, deadline: float, ready: Callable[[], bool], interval: float = 0.1) -> None:
        """Polls `ready` until true (an OSError: not listening yet); fails fast, with the log tail, if one of
        our processes died."""
        def check() -> bool:
            self.group.check_alive()
            return ready()

        try:
            wait_for(what, check, deadline - time.monotonic(), interval, retry=OSError)
        except WaitTimeout as e:
            raise StartupError(f"{e}; logs in {self.group.log_dir}") from None

    # ------------------------------------------------------------------------------------- stop
    def stop(self, keep_state: bool = False) -> None:
        """Stops every process recorded in the state dir (also those of an earlier `up`), then
        removes the state dir unless keep_state."""
        # Started by this Python process, or by an earlier one (`up`): then the pid file is all we have.
        group = self.group if self.group is not None else ProcessGroup.adopt(self.state_dir)
        had_node = self.node is not None or any(p.name == "kubelet" for p in group.processes)
        if self.node is not None and any(p.name == "kubelet" and p.alive() for p in group.processes):
            try:
                self.node.drain(self.kubeconfig)  # the kubelet stops the pods (CNI teardown included)
            except Exception as e:  # the machine clean-up below removes what is left
                print(f"real node: drain failed: {e}")
        group.stop()
        self.group = None
        if had_node:
            from .real_node import cleanup_machine, lock_free

            if self.node is not None:
                self.node.stop()  # undoes the machine-wide changes, releases the lock
                self.node = None
            elif lock_free():  # `down` from another process: the node's processes (lock holders) are gone
                cleanup_machine()
        if not keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            if not self.kubeconfig.is_relative_to(self.state_dir):
                self.kubeconfig.unlink(missing_ok=True)

    def running(self) -> bool:
        return any(p.alive() for p in ProcessGroup.adopt(self.state_dir).processes)


def remove_stale_state_dirs(parent: Path, prefix: str) -> None:
    """Removes the state dirs of control planes whose processes are all gone: what a SIGKILLed test
    run leaves (its processes die with it, its files stay). A dir without a pid file is left alone
    for an hour: its control plane may be starting."""
    for state in parent.glob(prefix + "*"):
        group = ProcessGroup.adopt(state)
        recorded = group.pid_file.exists()
        try:
            old = time.time() - state.stat().st_mtime > 3600
        except OSError:
            continue
        if (recorded and not any(p.alive() for p in group.processes)) or (not recorded and old):
            shutil.rmtree(state, ignore_errors=True)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def _rest_ok(rest: _Rest, path: str) -> bool:
    return rest.call("GET", path)[0] == 200


def _node_ready(rest: _Rest, name: str) -> bool:
    status, node = rest.call("GET", f"/api/v1/nodes/{name}")
    return status == 200 and any(c["type"] == "Ready" and c["status"] == "True"
                                 for c in node.get("status", {}).get("conditions", []))


def _created(answer: tuple[int, Any], what: str) -> None:
    status, body = answer
    if status not in (200, 201):
        raise StartupError(f"creating {what} failed: HTTP {status}: {body}")
