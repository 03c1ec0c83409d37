#!/usr/bin/env bash
# bench/run.sh: tollgate's benchmark, one command.
#
#   bench/run.sh                  default matrix (~5 min): 3 interleaved rounds of direct-to-mock
#                                 vs through-tollgate at 1, 16, 64, 256 connections,
#                                 non-streaming (wrk) and streaming (stream_client)
#   bench/run.sh --quick          the same, 3 rounds of 1-1.5 s cells (~1.5 min)
#   bench/run.sh --portkey        also through Portkey's gateway (npm, pinned), side by side (~7 min)
#   bench/run.sh --open-streams   also 5,000 concurrent open streams, one chunk per second
#   bench/run.sh --open-streams-only [--open-count N] [--open-seconds S]
#   bench/run.sh --ref REV        build tollgate from a committed revision (git archive) rather
#                                 than the working tree, e.g. while others edit src/
#   options passed on to bench/harness.py: --rounds N --duration S --stream-duration S
#       --conns 1,16,64,256 --chunks N --interval-ms M --open-seconds S --perf --log-level L
#
# Installs what is missing (Debian packages; npm for --portkey), builds tollgate (Release) into
# bench/build/tollgate and the C tools into bench/build/, runs everything on 127.0.0.1 only,
# stops every process it started by PID, prints the table and writes bench/results/latest.md,
# latest.csv and raw.csv.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$BENCH")"
BUILD="$BENCH/build"

portkey=0
open_streams=0
open_only=0
open_count=5000
ref=""
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --portkey) portkey=1; pass+=(--portkey) ;;
    --open-streams) open_streams=1 ;;
    --open-streams-only) open_streams=1; open_only=1 ;;
    --open-count) open_count="$2"; shift ;;
    --ref) ref="$2"; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) pass+=("$1") ;;
  esac
  shift
done

log() { echo "[bench] $*" >&2; }

# ---- dependencies: install only what is missing ------------------------------------------
need_pkgs=()
for p in wrk python3 sqlite3 curl gcc make cmake pkg-config libmicrohttpd-dev libcurl4-openssl-dev \
         libjansson-dev libssl-dev libsqlite3-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ "$portkey" = 1 ] && ! command -v npm >/dev/null 2>&1; then
  need_pkgs+=(nodejs npm)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

if [ "$portkey" = 1 ]; then
  # exact pins (package.json + package-lock.json); @hono/node-server 1.14.1 because later
  # versions break Portkey's streaming
  if [ ! -f "$BENCH/portkey/node_modules/@portkey-ai/gateway/package.json" ] ||
     [ ! -f "$BENCH/portkey/node_modules/@hono/node-server/package.json" ] ||
     ! grep -q '"version": "1.14.1"' "$BENCH/portkey/node_modules/@hono/node-server/package.json"; then
    log "installing Portkey's gateway into bench/portkey (npm)"
    (cd "$BENCH/portkey" && npm ci --no-audit --no-fund --ignore-scripts >/dev/null 2>&1 ||
                            npm install --no-audit --no-fund --ignore-scripts >/dev/null)
  fi
fi

# ---- build --------------------------------------------------------------------------------
mkdir -p "$BUILD"
SRC="$ROOT"
source_desc="working tree at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ -n "$ref" ]; then
  SRC="$BUILD/src"
  rm -rf "$SRC" && mkdir -p "$SRC"
  git -C "$ROOT" archive "$ref" | tar -x -C "$SRC"
  source_desc="$ref = $(git -C "$ROOT" rev-parse --short "$ref")"
  rm -rf "$BUILD/tollgate"   # another source dir: start the cmake cache afresh
elif [ -f "$BUILD/tollgate/CMakeCache.txt" ] && ! grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT\$" "$BUILD/tollgate/CMakeCache.txt"; then
  rm -rf "$BUILD/tollgate"
fi
log "building tollgate (Release, $source_desc) into bench/build/tollgate"
# BENCH_CFLAGS (e.g. -Wno-error=format-truncation) goes to CMAKE_C_FLAGS, for a tree whose
# Release build trips on a warning that the default build does not see
cmake -S "$SRC" -B "$BUILD/tollgate" -DCMAKE_BUILD_TYPE=Release -DTG_TESTS=OFF \
      -DCMAKE_C_FLAGS="${BENCH_CFLAGS:-}" >/dev/null
cmake --build "$BUILD/tollgate" -j"$(nproc)" >/dev/null
CFLAGS_BENCH=(-O2 -g -std=c11 -Wall -Wextra)
for tool in fast_mock stream_client sockcheck floor_relay; do
  if [ ! -x "$BUILD/$tool" ] || [ "$BENCH/$tool.c" -nt "$BUILD/$tool" ] ||
     [ "$BENCH/bench_net.h" -nt "$BUILD/$tool" ]; then
    log "building bench/build/$tool"
    gcc "${CFLAGS_BENCH[@]}" -o "$BUILD/$tool" "$BENCH/$tool.c"
  fi
done

# the ledger's latency probe links tollgate's library (bench/ledger_bench.c)
log "building bench/build/ledger_bench"
# shellcheck disable=SC2046
gcc "${CFLAGS_BENCH[@]}" -D_GNU_SOURCE -I"$SRC/include" -o "$BUILD/ledger_bench" \
    "$BENCH/ledger_bench.c" "$BUILD/tollgate/libtollgate.a" \
    $(pkg-config --libs libmicrohttpd libcurl jansson sqlite3 libcrypto) -lpthread

# ---- run ------------------------------------------------------------------------------------
# raise the open-files limit for us and every child (5,000 streams = ~10,000 sockets in tollgate)
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

args=(--bindir "$BUILD" --tollgate "$BUILD/tollgate/tollgate" --work "$BUILD/run"
      --ledger-bench "$BUILD/ledger_bench"
      --out "$BENCH/results" --source "$source_desc")
[ "$open_streams" = 1 ] && args+=(--open-streams "$open_count")
[ "$open_only" = 1 ] && args+=(--no-matrix)
rm -rf "$BUILD/run"
exec python3 "$BENCH/harness.py" "${args[@]}" "${pass[@]}"
