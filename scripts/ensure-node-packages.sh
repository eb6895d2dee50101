#!/usr/bin/env bash
# Makes the Debian packages of the real test node and of the daemonless image build available
# (idempotent): containerd + runc (the container runtime the kubelet talks to), the CNI plugins
# (bridge, host-local, portmap, loopback under /usr/lib/cni), iptables (the kubelet and kube-proxy
# program it), mmdebstrap (the base image from Debian packages, no registry needed) and buildah
# (builds the Dockerfiles without a daemon). Nothing is started: containerd's packaged service is kept
# from starting; the test node runs its own containerd with its own state directories.
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables mmdebstrap buildah fuse-overlayfs uidmap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  "$(dirname "$0")/apt-install-quiet.sh" ensure-node-packages "${missing[@]}"
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi
echo ok
