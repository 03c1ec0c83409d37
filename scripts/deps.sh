#!/usr/bin/env bash
# deps.sh: install what tollgate needs to build and test from Debian 12's packages, only if
# something is missing. Used by run.sh and test.sh; needs root (or sudo) the first time.
set -euo pipefail

pkgs=(build-essential cmake pkg-config clang libmicrohttpd-dev libcurl4-openssl-dev
      libjansson-dev libssl-dev libsqlite3-dev sqlite3 libcmocka-dev python3 curl ca-certificates)
# node + npm for the OpenAI client compatibility test (any install of node >= 18 will do)
if [ "${1:-}" = "--test" ] && ! command -v npm >/dev/null 2>&1; then
  pkgs+=(nodejs npm)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "deps: need root to apt-get install ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
