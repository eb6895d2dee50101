#!/usr/bin/env bash
# Makes Debian's `prometheus` and `promtool` available (idempotent); prints the directory holding both.
# The tests run the binaries directly on loopback: the packaged service is stopped and disabled, so
# nothing keeps listening on :9090 after an install.
set -euo pipefail
have() { command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; }
if ! have; then
  "$(dirname "$0")/apt-install-quiet.sh" ensure-prometheus prometheus
fi
# Should the service have started anyway (systemd host), stop it: the tests start their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
if command -v service >/dev/null 2>&1; then service prometheus stop >/dev/null 2>&1 || true; fi
dirname "$(command -v promtool)"
