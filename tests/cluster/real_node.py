"""A real node beside the kwok GPU nodes: kubelet + containerd + runc + bridge CNI, kube-proxy for the
`kubernetes` Service and CoreDNS for cluster DNS (headless Services), all as host processes.

Machine-wide, so one per machine: a lock (/run/lock/tuneguard-real-node.lock) is held by the Python
process that started the node and by the kubelet (it inherits the locked file), so it is free again
exactly when both are gone, also after a crash. What the node changes on the machine, and undoes in
stop() (and, after a crash, in the next start() or `make cluster-down`, under the lock):

  bridge        BRIDGE (NODE_IP/24, the node's address and the pods' gateway); pods' veths and netns
                (/run/netns/cni-*)
  sysctl        net.ipv4.ip_forward (the bridge plugin sets it), restored to the saved value
  iptables      chains KUBE-* (kubelet, kube-proxy) and CNI-* in filter/nat/mangle, v4 and v6, with the
                rules that jump to them
  cgroups       kubepods in every cgroup v1 hierarchy (and the processes in it)
  mounts        everything mounted under NODE_ROOT, RUN_ROOT and /run/netns/cni-*
  files         NODE_ROOT, RUN_ROOT, /var/lib/kubelet/device-plugins (the kubelet makes it whatever
                its --root-dir), its symlinks in /var/log/containers, /var/lib/cni/{cache,results}
                entries of our network, /run/containerd when we created it
Images stay in containerd's root under ${TUNEGUARD_CACHE}/node/containerd (content-keyed tags), so a
warm run imports nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from .pki import Pki, write_kubeconfig
from .polling import WaitTimeout, wait_for
from .processes import free_port

NODE_NAME = "tuneguard-node"
NODE_IP = "10.250.0.1"
POD_SUBNET = "10.250.0.0/24"
BRIDGE = "tgnode0"
CNI_NETWORK = "tuneguard-node"
CLUSTER_DNS = NODE_IP  # CoreDNS binds NODE_IP:53
CLUSTER_DOMAIN = "cluster.local"
TAINT_KEY = "tuneguard.io/real-node"  # NoSchedule: only pods that tolerate it run real containers
NODE_LABEL = "tuneguard.io/real-node"  # "true" on the real node
NODE_ROOT = Path("/var/lib/tuneguard-node")  # kubelet root, pod logs, CNI IPAM, hostPath volumes
RUN_ROOT = Path("/run/tuneguard-node")  # containerd state and socket
LOCK_PATH = Path("/run/lock/tuneguard-real-node.lock")
CNI_BIN_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")
CONTAINER_LOG_LINKS = Path("/var/log/containers")  # the kubelet's symlinks to pod logs (a fixed path)
SAVED = NODE_ROOT / "saved-machine-state.json"
VOLUMES_DIR = NODE_ROOT / "volumes"  # hostPath PersistentVolumes of the tests live here

CONTAINERD_SOCKET = RUN_ROOT / "containerd" / "containerd.sock"


class NodeUnavailable(RuntimeError):
    """The real node cannot run here (not root, packages missing, lock held too long)."""


def _cache() -> Path:
    return Path(os.environ.get("TUNEGUARD_CACHE", str(Path.home() / ".cache" / "tuneguard"))).expanduser()


def containerd_root() -> Path:
    return _cache() / "node" / "containerd"


def _run(*cmd: str, check: bool = True, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def host_tools() -> dict[str, str]:
    """containerd, its shim, runc, ctr, iptables and the CNI plugins, from Debian's packages."""
    found = {}
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip6tables", "ip"):
        path = shutil.which(tool)
        if not path:
            raise NodeUnavailable(f"{tool} not found: run scripts/ensure-node-packages.sh")
        found[tool] = path
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN_DIR / plugin).exists():
            raise NodeUnavailable(f"CNI plugin {CNI_BIN_DIR / plugin} missing: run scripts/ensure-node-packages.sh")
    return found


# ----------------------------------------------------------------------------------------- lock


def acquire_lock(timeout: float) -> int:
    """The machine-wide real-node lock, as an fd to hand to the node's processes (pass_fds)."""
    if os.geteuid() != 0:
        raise NodeUnavailable("the real node needs root (kubelet, containerd, CNI)")
    LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:  # flock returns None once it holds the lock
        wait_for(f"the lock {LOCK_PATH}", lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB) is None, timeout,
                 interval=1, retry=BlockingIOError)
    except WaitTimeout:
        os.close(fd)
        raise NodeUnavailable(f"another real node holds {LOCK_PATH} (one per machine) after {timeout:.0f} s") from None
    os.set_inheritable(fd, True)
    return fd


def lock_free() -> bool:
    try:
        fd = os.open(LOCK_PATH, os.O_RDWR)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------- cleanup


def _mounts_under(prefixes: tuple[str, ...]) -> list[str]:
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefixes):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)  # deepest first


def _cgroup_dirs() -> list[Path]:
    """The kubepods cgroups in every v1 hierarchy (and the v2 root, if any), deepest first."""
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found.extend(d for d, _, _ in os.walk(top))
        elif hierarchy.name == "kubepods" and hierarchy.is_dir():  # cgroup v2 unified root
            found.extend(d for d, _, _ in os.walk(hierarchy))
    return sorted((Path(d) for d in set(found)), key=lambda p: len(p.parts), reverse=True)


def _pids_in_cgroups(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        try:
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        except OSError:
            pass
    return pids


def _node_processes() -> list[int]:
    """The node's own processes: every one whose command line names NODE_ROOT or RUN_ROOT (containerd,
    its shims, which daemonize and so outlive it on a crash, the kubelet, kube-proxy, CoreDNS)."""
    pids = []
    marks = (str(NODE_ROOT).encode(), str(RUN_ROOT).encode())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if any(m in cmdline for m in marks):
            pids.append(int(entry.name))
    return pids


def _kill(pids, sig=signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


OUR_CHAINS = ("KUBE-", "CNI-")


def iptables_cleanup_commands(listing: str) -> list[list[str]]:
    """For one table's `iptables -S` output: the arguments that remove our chains (OUR_CHAINS) and the
    rules of other chains that jump to them, in order (rules first, then flush, then delete)."""
    lines = listing.splitlines()
    chains = [line.split()[1] for line in lines if line.startswith("-N ") and line.split()[1].startswith(OUR_CHAINS)]
    commands = []
    for line in lines:
        parts = shlex.split(line)  # comments are quoted: -m comment --comment "kubernetes service portals"
        if parts[:1] == ["-A"] and len(parts) > 1 and not parts[1].startswith(OUR_CHAINS) \
                and any(p.startswith(OUR_CHAINS) for p in parts[2:]):
            commands.append(["-D", *parts[1:]])
    commands += [["-F", c] for c in chains] + [["-X", c] for c in chains]
    return commands


def _iptables_cleanup(tool: str) -> None:
    if not shutil.which(tool):
        return
    for table in ("filter", "nat", "mangle"):
        listed = _run(tool, "-w", "-t", table, "-S", check=False)
        if listed.returncode == 0:
            for args in iptables_cleanup_commands(listed.stdout):
                _run(tool, "-w", "-t", table, *args, check=False)


def leftovers() -> bool:
    """Whether a real node left anything on this machine (checked cheaply)."""
    if NODE_ROOT.exists() or RUN_ROOT.exists() or Path(f"/sys/class/net/{BRIDGE}").exists() \
            or _cgroup_dirs() or _node_processes():
        return True
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            if shutil.which(tool) and iptables_cleanup_commands(_run(tool, "-w", "-t", table, "-S", check=False).stdout):
                return True
    return False


def cleanup_machine() -> list[str]:
    """Undoes everything a real node changes on the machine (see the module docstring); safe to run
    when nothing is left. Call it only while holding the lock, or when lock_free(). Returns what it did."""
    did: list[str] = []
    # 1. Processes: everything in the pods' cgroups, then the node's own (shims included).
    dirs = _cgroup_dirs()
    pids = _pids_in_cgroups(dirs)
    node = _node_processes()
    if pids or node:
        _kill(pids)
        _kill(node)
        did.append(f"killed {len(pids)} container processes, {len(node)} node processes")
        with contextlib.suppress(WaitTimeout):  # bounded; the clean-up goes on either way
            wait_for("the killed processes to exit", lambda: not (_pids_in_cgroups(dirs) or _node_processes()), 10,
                     interval=0.2)
    # 2. Mounts: pod volumes, container root file systems, network namespaces.
    points = _mounts_under((str(NODE_ROOT) + "/", str(RUN_ROOT) + "/", "/run/netns/cni-", "/var/run/netns/cni-"))
    for point in points:
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "-l", point, check=False)
    if points:
        did.append(f"unmounted {len(points)} mounts")
    for ns in list(Path("/run/netns").glob("cni-*")) if Path("/run/netns").is_dir() else []:
        ns.unlink(missing_ok=True)
    # 3. cgroups.
    for d in _cgroup_dirs():
        try:
            d.rmdir()
        except OSError:
            pass
    if dirs:
        did.append(f"removed {len(dirs)} kubepods cgroups")
    # 4. Network: the bridge (its veths went with the namespaces), iptables, ip_forward.
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run("ip", "link", "delete", BRIDGE, check=False)
        did.append(f"deleted bridge {BRIDGE}")
    _iptables_cleanup("iptables")
    _iptables_cleanup("ip6tables")
    saved = {}
    if SAVED.exists():
        try:
            saved = json.loads(SAVED.read_text())
        except ValueError:
            saved = {}
    if "ip_forward" in saved:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(saved["ip_forward"])
        did.append(f"net.ipv4.ip_forward restored to {saved['ip_forward'].strip()}")
    # 5. Files.
    if saved.get("created_device_plugins"):
        shutil.rmtree(DEVICE_PLUGINS, ignore_errors=True)
        for parent in (DEVICE_PLUGINS.parent,):
            try:
                parent.rmdir()
            except OSError:
                pass
    if saved.get("created_run_containerd"):
        shutil.rmtree("/run/containerd", ignore_errors=True)
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(str(NODE_ROOT)):
                link.unlink()
        if saved.get("created_container_log_links"):
            try:
                CONTAINER_LOG_LINKS.rmdir()
            except OSError:
                pass
    for cache_dir in (Path("/var/lib/cni/cache/results"), Path("/var/lib/cni/results")):
        for f in cache_dir.glob(f"{CNI_NETWORK}-*") if cache_dir.is_dir() else []:
            f.unlink(missing_ok=True)
    if saved.get("created_run_netns"):
        try:
            Path("/run/netns").rmdir()
        except OSError:
            pass
    if saved.get("created_var_lib_cni"):
        for d in (Path("/var/lib/cni/cache/results"), Path("/var/lib/cni/cache"), Path("/var/lib/cni/results"),
                  Path("/var/lib/cni")):
            try:
                d.rmdir()
            except OSError:
                pass
    for d in (RUN_ROOT, NODE_ROOT):
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
            did.append(f"removed {d}")
    return did


# ----------------------------------------------------------------------------------------- node


class RealNode:
    """Set up before the API server starts (prepare: lock, clean machine, bridge, certificates), started
    once it is ready (start), stopped before it stops (stop)."""

    def __init__(self, pki: Pki, bins: dict[str, Path], *, lock_timeout: float = 1200):
        self.state = NODE_ROOT / "config"  # every command line names NODE_ROOT: cleanup_machine finds them
        self.pki = pki
        self.bins = bins
        self.lock_timeout = lock_timeout
        self.lock_fd: int | None = None
        self.tools: dict[str, str] = {}

    # --------------------------------------------------------------------------------- prepare
    def prepare(self) -> tuple[list[str], list[str]]:
        """Lock, clean up leftovers, create the bridge. Returns (extra API server SANs, extra flags)."""
        self.tools = host_tools()
        for b in ("kubelet", "kube-proxy", "coredns"):
            if b not in self.bins:
                raise NodeUnavailable(f"{b} missing from the control-plane binaries")
        self.lock_fd = acquire_lock(self.lock_timeout)
        leftovers = cleanup_machine()
        if leftovers:
            print(f"real node: cleaned up after an earlier run: {'; '.join(leftovers)}", flush=True)
        NODE_ROOT.mkdir(parents=True)
        RUN_ROOT.mkdir(parents=True)
        SAVED.write_text(json.dumps({
            "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
            "created_device_plugins": not DEVICE_PLUGINS.exists(),
            "created_run_containerd": not Path("/run/containerd").exists(),
            "created_container_log_links": not CONTAINER_LOG_LINKS.exists(),
            "created_var_lib_cni": not Path("/var/lib/cni").exists(),
            "created_run_netns": not Path("/run/netns").exists(),
        }))
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        self.state.mkdir(parents=True, exist_ok=True)
        kubelet_client = self.pki.issue("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client")
        flags = [
            f"--kubelet-client-certificate={kubelet_client.cert}", f"--kubelet-client-key={kubelet_client.key}",
            f"--kubelet-certificate-authority={self.pki.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
        return [f"IP:{NODE_IP}"], flags

    # ----------------------------------------------------------------------------------- start
    def start(self, group, server_port: int, admin_kubeconfig: Path, wait) -> None:
        """Starts containerd, the kubelet, kube-proxy and CoreDNS in `group` (the control plane's
        ProcessGroup); `wait(what, ready)` polls until ready."""
        self.start_containerd(group, wait)
        self.start_node_services(group, server_port, admin_kubeconfig)
        wait(f"node {NODE_NAME} to become Ready (kubelet)", lambda: self._ready(admin_kubeconfig))

    def start_containerd(self, group, wait) -> None:
        s = self.state
        pause_refs = build_images("pause")
        pause = pause_refs["pause"]
        containerd_root().mkdir(parents=True, exist_ok=True)
        (s / "cni").mkdir(exist_ok=True)
        (s / "cni" / "10-tuneguard.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": CNI_NETWORK,
            "plugins": [{
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(NODE_ROOT / "cni-ipam")},
            }],
        }, indent=2))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (s / "containerd.toml").write_text(f"""version = 2
root = "{containerd_root()}"
state = "{RUN_ROOT / 'containerd'}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{CONTAINERD_SOCKET}"
[ttrpc]
  address = "{RUN_ROOT / 'containerd' / 'containerd.sock.ttrpc'}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{RUN_ROOT / 'opt'}"
[{cri}]
  sandbox_image = "{pause}"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{self.tools['runc']}"
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{s / 'cni'}"
""")
        # Our shim must be the one containerd finds first on PATH (Debian's, beside containerd).
        env = {**os.environ, "PATH": f"{Path(self.tools['containerd-shim-runc-v2']).parent}:{os.environ['PATH']}"}
        group.start("containerd", Path(self.tools["containerd"]), [f"--config={s / 'containerd.toml'}"], env=env)
        wait("containerd", lambda: _run(self.tools["ctr"], "--address", str(CONTAINERD_SOCKET), "version",
                                        check=False, timeout=10).returncode == 0)
        self.import_images(pause_refs, ["pause"])

    def start_node_services(self, group, server_port: int, admin_kubeconfig: Path) -> None:
        """The kubelet, kube-proxy and CoreDNS."""
        s = self.state
        ca = self.pki.ca.cert
        server = f"https://{NODE_IP}:{server_port}"
        serving = self.pki.issue("kubelet-serving", f"/CN={NODE_NAME}",
                                 server_sans=[f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"])
        client = self.pki.issue("kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}")
        kubeconfig = write_kubeconfig(s / "kubelet.kubeconfig", server=server, ca=ca,
                                      user=f"system:node:{NODE_NAME}", client=client)
        (s / "resolv.conf").write_text("")  # pods get only the cluster DNS
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(ca)}},
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(serving.cert), "tlsPrivateKeyFile": str(serving.key),
            "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "oomScoreAdj": 0,  # no CAP_SYS_RESOURCE (see containerd's restrict_oom_score_adj)
            "clusterDNS": [CLUSTER_DNS], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(s / "resolv.conf"),
            "podLogsDir": str(NODE_ROOT / "pod-logs"),
            "volumePluginDir": str(NODE_ROOT / "volume-plugins"),
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "maxPods": 30,
            "nodeStatusReportFrequency": "10s",
        }
        (s / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config))
        group.start("kubelet", self.bins["kubelet"], [
            f"--config={s / 'kubelet.yaml'}", f"--kubeconfig={kubeconfig}",
            f"--root-dir={NODE_ROOT / 'kubelet'}", f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
            f"--node-labels={NODE_LABEL}=true", "--v=1",
        ], pass_fds=(self.lock_fd,))

        # kube-proxy: the `kubernetes` Service (and every ClusterIP Service) for pods ---------
        proxy_client = self.pki.issue("kube-proxy", "/CN=system:kube-proxy")
        proxy_kubeconfig = write_kubeconfig(s / "kube-proxy.kubeconfig", server=server, ca=ca,
                                            user="system:kube-proxy", client=proxy_client)
        (s / "kube-proxy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(proxy_kubeconfig)},
            "hostnameOverride": NODE_NAME, "mode": "iptables", "clusterCIDR": POD_SUBNET,
            "bindAddress": NODE_IP, "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # No machine-wide sysctls: leave conntrack limits and route_localnet alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "iptables": {"localhostNodePorts": False},
        }))
        group.start("kube-proxy", self.bins["kube-proxy"], [f"--config={s / 'kube-proxy.yaml'}"])

        # CoreDNS: cluster DNS on NODE_IP:53, from the API server's Services and EndpointSlices --
        (s / "Corefile").write_text(f""".:53 {{
    bind {CLUSTER_DNS}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {admin_kubeconfig} tuneguard-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
""")
        group.start("coredns", self.bins["coredns"], [f"-conf={s / 'Corefile'}"])

    def _ready(self, kubeconfig: Path) -> bool:
        from .binaries import kubectl_binary

        done = _run(str(kubectl_binary()), "--kubeconfig", str(kubeconfig), "get", "node", NODE_NAME, "-o",
                    'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False, timeout=10)
        return done.stdout.strip() == "True"

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """`ctr` against the node's containerd, in the kubelet's namespace (k8s.io)."""
        return _run(self.tools["ctr"], "--address", str(CONTAINERD_SOCKET), "-n", "k8s.io", *args,
                    check=check, timeout=timeout)

    def import_images(self, refs: dict[str, str], names: list[str]) -> None:
        """Imports the docker-archives of `names` (refs as build_images returns them: name -> reference,
        name.archive -> file) that containerd does not hold yet."""
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        imported = False
        for name in names:
            if refs[name] in present:
                continue
            started = time.monotonic()
            self.ctr("images", "import", refs[f"{name}.archive"], timeout=1800)
            print(f"real node: imported {refs[name]} in {time.monotonic() - started:.0f} s", flush=True)
            imported = True
        if imported:
            self._remove_older_builds([refs[n] for n in names])

    def _remove_older_builds(self, current: list[str]) -> None:
        """Older builds of the current images go, with the image-ID refs the kubelet's CRI keeps beside their
        names: each trainer build holds ~13 GB here (layers and their unpacked snapshots), and a filling disk
        lets the kubelet's image GC choose what to drop (once the pause image)."""
        target = dict(line.split()[::2][:2] for line in self.ctr("images", "ls").stdout.splitlines()[1:])
        stale = older_builds(target, current)
        if stale:
            self.ctr("images", "rm", "--sync", *sorted(stale), check=False, timeout=300)

    # ------------------------------------------------------------------------------------ stop
    def drain(self, admin_kubeconfig: Path, timeout: float = 60) -> None:
        """Deletes every pod on the node and waits for the kubelet to stop their sandboxes, so CNI tears
        their networking down (what a plain kill would leave behind)."""
        from .binaries import kubectl_binary

        kubectl = [str(kubectl_binary()), "--kubeconfig", str(admin_kubeconfig)]
        _run(*kubectl, "delete", "pods", "-A", "--field-selector", f"spec.nodeName={NODE_NAME}",
             "--grace-period=0", "--force", "--wait=false", check=False, timeout=30)

        def stopped() -> bool:
            tasks = self.ctr("tasks", "ls", "-q", check=False, timeout=10)
            return tasks.returncode != 0 or not tasks.stdout.strip()

        with contextlib.suppress(WaitTimeout):  # bounded: stopping the processes and cleanup_machine take the rest
            wait_for("the node's containers to stop", stopped, timeout, interval=0.5)

    def stop(self) -> None:
        """After the node's processes are stopped: undo the machine-wide changes, release the lock."""
        cleanup_machine()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def build_images(*names: str) -> dict[str, str]:
    """scripts/build-images.sh --archive NAMES: {name: reference, name.archive: path}."""
    from .binaries import REPO

    done = subprocess.run([str(REPO / "scripts" / "build-images.sh"), "--archive", *names],
                          stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scripts/build-images.sh {' '.join(names)} failed (exit {done.returncode})")
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def older_builds(target: dict[str, str], current: list[str]) -> set[str]:
    """Refs to remove from `ctr images ls` (ref -> manifest digest): other builds of the current images, and
    the image-ID refs (sha256:...) no remaining name points at."""
    stale = {r for r in target if any(_same_image(r, c) and r != c for c in current)}
    kept = {d for r, d in target.items() if not r.startswith("sha256:") and r not in stale}
    return stale | {r for r, d in target.items() if r.startswith("sha256:") and d not in kept}


def _same_image(a: str, b: str) -> bool:
    """Same repository and tag flavor (trainer:cpu-<key> and trainer:cpu-<other key>; operator:<key>)."""
    (ra, _, ta), (rb, _, tb) = a.rpartition(":"), b.rpartition(":")
    return ra == rb and ta.rpartition("-")[0] == tb.rpartition("-")[0]
