#!/usr/bin/env bash
# Builds every libFuzzer target of tests/fuzz with clang, ASan and UBSan, and runs each one for a
# bounded time from its committed seeds (tests/fuzz/corpus/<target>/).
#   usage: scripts/fuzz.sh [SECONDS]      (default 30 seconds per target)
# Exits non-zero when a target finds a crash, a sanitizer report or an escaped exception; the
# input that triggered it is left in build-fuzz/fuzz-artifacts/. Needs clang and its runtimes
# (Debian: apt-get install clang libclang-rt-14-dev).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
build=${NDIF_FUZZ_BUILD:-$repo/build-fuzz}
command -v clang++ >/dev/null || { echo "fuzz: clang++ is required (Debian: apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }

# The libraries must be instrumented for coverage and sanitizers too, not only the fuzz targets.
flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CC=clang CXX=clang++ cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNDIF_FUZZ=ON -DNDIF_TESTS=ON \
  -DNDIF_BENCH=OFF -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >/dev/null
cmake --build "$build" --target fuzz_targets -j2

mkdir -p "$build/fuzz-artifacts"
failed=()
for source in "$repo"/tests/fuzz/*_fuzz.cpp; do
  target=$(basename "$source" .cpp)
  seeds=$repo/tests/fuzz/corpus/$target
  # libFuzzer adds what it finds to the first directory; the committed seeds stay untouched.
  work=$build/fuzz-corpus/$target
  mkdir -p "$work"
  inputs=("$work")
  [ -d "$seeds" ] && inputs+=("$seeds")
  echo "fuzz: $target for ${seconds}s"
  if ! "$build/bin/$target" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
      -artifact_prefix="$build/fuzz-artifacts/$target-" "${inputs[@]}" >"$build/fuzz-artifacts/$target.log" 2>&1; then
    tail -n 40 "$build/fuzz-artifacts/$target.log" >&2
    failed+=("$target")
  else
    grep -E "^stat::number_of_executed_runs|^#[0-9]+.*DONE" "$build/fuzz-artifacts/$target.log" | tail -n 2
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}; inputs and logs in $build/fuzz-artifacts/" >&2
  exit 1
fi
echo "fuzz: no findings"
