#!/usr/bin/env bash
# Installs Debian packages without starting their services (policy-rc.d keeps the postinst scripts from
# doing so; the tests run their own processes). Usage: apt-install-quiet.sh CALLER PACKAGE...
# CALLER names the script in the error a non-root user gets.
set -euo pipefail
caller=$1; shift
if [ "$(id -u)" != 0 ]; then
  echo "$caller: missing $* and not root; install these Debian packages" >&2
  exit 1
fi
echo ">> installing Debian packages: $*" >&2
export DEBIAN_FRONTEND=noninteractive
prc=/usr/sbin/policy-rc.d
if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod +x "$prc"; trap 'rm -f "$prc"' EXIT; fi
apt-get update -qq >&2 || true
apt-get install -y -qq --no-install-recommends "$@" >&2
