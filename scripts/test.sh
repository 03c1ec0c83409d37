#!/usr/bin/env bash
# test.sh: install what is missing, then build and run the whole suite three ways:
#   1. gcc, -Werror: unit + integration + OpenAI-client compatibility tests
#   2. clang, -Werror: the same build must be warning-free (unit tests run too)
#   3. gcc with AddressSanitizer + UndefinedBehaviorSanitizer: the same suite again
# Exit status is non-zero if any build or test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test

# the official openai npm client, pinned by tests/compat/package-lock.json
if [ ! -d tests/compat/node_modules/openai ]; then
  (cd tests/compat && npm ci --no-audit --no-fund --loglevel=error)
fi

jobs=$(nproc)
run_suite() {  # dir, label, extra cmake args...
  local dir=$1 label=$2; shift 2
  echo "=== $label: configure + build ($dir)"
  cmake -S . -B "$dir" "$@" >/dev/null
  cmake --build "$dir" -j"$jobs" >/dev/null   # -Werror: any warning fails the build
  echo "=== $label: tests"
  (cd "$dir" && ctest --output-on-failure -j"$jobs" ${CTEST_ARGS:-})
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# optimized builds see more (-O2 enables gcc's deeper format and overflow analysis)
run_suite build-test "gcc -O2" -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=RelWithDebInfo
CTEST_ARGS="-L unit" run_suite build-clang "clang -O2" -DCMAKE_C_COMPILER=clang \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_suite build-asan "gcc + ASan/UBSan" -DCMAKE_C_COMPILER=gcc -DCMAKE_BUILD_TYPE=Debug \
  -DTG_SANITIZE=ON
echo "=== all suites passed"
