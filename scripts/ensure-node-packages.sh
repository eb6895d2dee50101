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
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-node-packages: missing ${missing[*]} and not root; install these Debian packages" >&2
    exit 1
  fi
  echo ">> installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  prc=/usr/sbin/policy-rc.d
  if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; trap 'rm -f "$prc"' EXIT; fi
  apt-get update -qq >&2 || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl disable --now containerd >/dev/null 2>&1 || true
fi
echo ok
