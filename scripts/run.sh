#!/usr/bin/env bash
# run.sh: install what is missing, build tollgate (release), and start the gateway with the
# example config (config/tollgate.json) and a SQLite ledger at ./tollgate.db.
# Extra arguments go to `tollgate serve` (e.g. --listen 127.0.0.1:9090).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DTG_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" >/dev/null
echo "built build-release/tollgate; starting: tollgate serve --config config/tollgate.json $*" >&2
exec build-release/tollgate serve --config config/tollgate.json "$@"
