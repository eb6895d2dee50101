#!/usr/bin/env bash
# Makes Debian's `prometheus` and `promtool` available (idempotent); prints the directory holding both.
# The tests run the binaries directly on loopback: the packaged service is stopped and disabled, so
# nothing keeps listening on :9090 after an install.
set -euo pipefail
have() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }
if ! have; then
  if [ "$(id -u)" != 0 ]; then
    echo "ensure-prometheus: prometheus/promtool missing and not root; install Debian's 'prometheus' package" >&2
    exit 1
  fi
  echo ">> installing Debian's prometheus package (prometheus, promtool)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d: keep the package's postinst from starting the service (no init system here anyway).
  prc=/usr/sbin/policy-rc.d
  if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; trap 'rm -f "$prc"' EXIT; fi
  apt-get update -qq >&2 || true
  apt-get install -y -qq --no-install-recommends prometheus >&2
fi
# Should the service have started anyway (systemd host), stop it: the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
dirname "$(command -v promtool)"
