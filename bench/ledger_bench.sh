#!/usr/bin/env bash
# ledger_bench.sh: the ledger at scale. Fills a ledger with ROWS rows (default 10,000,000)
# through the real write path, then measures:
#   1. `tollgate bill --from <month> --to <next month> --by key,provider` (target < 1 s)
#   2. two-phase settlements per second, tg_ledger_insert + tg_ledger_settle with group
#      commit, on top of the full ledger and on an empty one (target >= 50,000/s)
#   3. `tollgate ledger verify` over the whole ledger (informational; VERIFY=0 skips it)
# and prints one "name value unit" line per figure. The ledger is deleted afterwards
# (KEEP=1 keeps it). Needs ~5 GB free for 10M rows.
#
# usage: bench/ledger_bench.sh [ROWS]
#   BUILD=dir      build directory (default build-bench; configured Release, no tests)
#   TG_BIN=path    use this tollgate binary instead of building one
#   DIR=dir        where the ledger goes (default: a new directory under ${TMPDIR:-/tmp})
#   SETTLE=n       settlements to time (default 500000)
set -euo pipefail

ROWS=${1:-10000000}
SETTLE=${SETTLE:-500000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build-bench}

say() { printf '%s\n' "$*" >&2; }

# ---- build ----------------------------------------------------------------------------
if [ -z "${TG_BIN:-}" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DTG_TESTS=OFF >/dev/null
    cmake --build "$BUILD" --target tollgate -j"$(nproc)" >/dev/null
    TG_BIN=$BUILD/tollgate
fi
LIB=$(dirname "$TG_BIN")/libtollgate.a
BENCH_BIN=${BENCH_BIN:-$(dirname "$TG_BIN")/ledger_bench}
if [ ! -x "$BENCH_BIN" ] || [ "$ROOT/bench/ledger_bench.c" -nt "$BENCH_BIN" ] ||
   [ "$LIB" -nt "$BENCH_BIN" ]; then
    # shellcheck disable=SC2046
    cc -std=c11 -D_GNU_SOURCE -O2 -I"$ROOT/include" -I"$ROOT/src" \
        "$ROOT/bench/ledger_bench.c" "$LIB" -o "$BENCH_BIN" \
        $(pkg-config --libs libmicrohttpd libcurl jansson sqlite3 libcrypto) -lpthread
fi

# ---- room -----------------------------------------------------------------------------
DIR=${DIR:-$(mktemp -d "${TMPDIR:-/tmp}/tg-ledger-bench.XXXXXX")}
mkdir -p "$DIR"
DB=$DIR/ledger.db
NEED_KB=$(( ROWS / 1000 * 550 + 1048576 ))   # ~430 bytes a row on disk, and slack
FREE_KB=$(df -Pk "$DIR" | awk 'NR == 2 { print $4 }')
if [ "$FREE_KB" -lt "$NEED_KB" ]; then
    say "ledger_bench: $DIR has $((FREE_KB / 1024)) MiB free, needs ~$((NEED_KB / 1024)) MiB"
    exit 1
fi
cleanup() {
    if [ "${KEEP:-0}" != 1 ]; then
        rm -f "$DB" "$DB-wal" "$DB-shm" "$DB-tgj0" "$DB-tgj1" "$DIR/fresh.db" \
              "$DIR/fresh.db-wal" "$DIR/bill.txt" "$DIR/fresh.db-shm" "$DIR/fresh.db-tgj0" \
              "$DIR/fresh.db-tgj1"
        rmdir "$DIR" 2>/dev/null || true
    else
        say "ledger_bench: kept $DB"
    fi
}
trap cleanup EXIT

# ---- 1. fill ---------------------------------------------------------------------------
say "ledger_bench: filling $DB with $ROWS rows (30 keys, 3 providers, 5 models, 90 days"
say "              from 2026-01-01) through tg_ledger_insert ..."
"$BENCH_BIN" fill "$DB" "$ROWS"
printf 'ledger_bytes %s bytes\n' "$(stat -c %s "$DB")"

# ---- 2. the bill -----------------------------------------------------------------------
ms() { date +%s%N | cut -c1-13; }
best=""
for run in 1 2 3; do
    t0=$(ms)
    "$TG_BIN" bill --ledger "$DB" --from 2026-02-01 --to 2026-03-01 --by key,provider \
        >"$DIR/bill.txt"
    t1=$(ms)
    dt=$((t1 - t0))
    printf 'bill_month_by_key_provider_run%d %d.%03d s\n' "$run" $((dt / 1000)) $((dt % 1000))
    if [ -z "$best" ] || [ "$dt" -lt "$best" ]; then best=$dt; fi
done
lines=$(grep -c '^tk_' "$DIR/bill.txt" || true)
printf 'bill_month_lines %s lines\n' "$lines"
if [ "$best" -ge 1000 ]; then
    say "ledger_bench: FAIL: the month's bill took ${best} ms (target < 1000 ms)"
    status=1
fi
"$BENCH_BIN" bill "$DB" 1769904000000 1772323200000

# ---- 3. settlements --------------------------------------------------------------------
settle() {   # settle LABEL PATH
    local out rate
    out=$("$BENCH_BIN" settle "$2" "$SETTLE")
    printf '%s\n' "$out" | sed "s/^settle_/settle_$1_/"
    rate=$(printf '%s\n' "$out" | awk '/^settle_rate/ { print $2 }')
    if [ "${rate:-0}" -lt 50000 ]; then
        say "ledger_bench: FAIL: $rate settlements/s on the $1 ledger (target >= 50000)"
        status=1
    fi
}
say "ledger_bench: $SETTLE two-phase settlements on top of the full ledger ..."
settle full "$DB"
say "ledger_bench: $SETTLE two-phase settlements on an empty ledger ..."
settle empty "$DIR/fresh.db"

# ---- 4. verify -------------------------------------------------------------------------
if [ "${VERIFY:-1}" = 1 ] && "$TG_BIN" ledger --help >/dev/null 2>&1; then
    t0=$(ms)
    "$TG_BIN" ledger verify --ledger "$DB" >&2
    t1=$(ms)
    dt=$((t1 - t0))
    printf 'verify_seconds %d.%03d s\n' $((dt / 1000)) $((dt % 1000))
fi
exit "${status:-0}"
