#!/usr/bin/env bash
# Builds and runs every test: the C++ style check, the unit, MPI and integration tests under
# ASan+UBSan, bounded fuzzing of every parser of network data and user files, then the whole suite (unit, MPI, tokenizer differential,
# integration against ndif-local, SLURM) on the normal build. The SLURM tests start the project's own
# single-node cluster (scripts/slurm-local.sh) and stop it at the end.
#   usage: scripts/test.sh [ctest args...]
#   NDIF_TEST_SANITIZE=0 skips the sanitizer build; NDIF_FUZZ_SECONDS=N sets the time per fuzz
#   target (default 20; 0 skips fuzzing).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
jobs=$(nproc)

# mpirun refuses root without these; loopback-only transports keep tests off the network.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo
export OMPI_MCA_rmaps_base_oversubscribe=1

# The pinned style (.clang-format) with the pinned clang-format of the test venv (scripts/setup-python.sh).
echo "test: C++ style (clang-format $("$here/.venv/bin/clang-format" --version | awk '{print $3}'))"
git ls-files '*.cpp' '*.hpp' | xargs "$here/.venv/bin/clang-format" --dry-run --Werror

if [ "${NDIF_TEST_SANITIZE:-1}" = 1 ]; then
  echo "test: unit and MPI tests under AddressSanitizer and UndefinedBehaviorSanitizer"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS=-O1 -DNDIF_SANITIZE=ON -DNDIF_BENCH=OFF \
    -DNDIF_WERROR=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  # Leak checking is on by default; programs that initialise MPI opt out (cmake/asan_options_mpi.cpp).
  # A sanitizer report exits 86, a code no test expects, so that the integration tests (which check
  # the documented exit codes 1-5) fail on it instead of mistaking it for a failure they provoke.
  ASAN_OPTIONS=exitcode=86 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86 \
    ctest --test-dir build-asan -R '^(Serial|MPI)\.' -j2 --output-on-failure
  # The integration tests against the sanitized ndif-sweep and ndif-local (each real binary driven
  # end to end: MPI ranks, HTTP, HDF5, signals, faults). The real-nnsight tests run on the normal
  # build only: under ASan they take 7 minutes of CI for C++ paths the G4 tests against ndif-local
  # here already drive.
  echo "test: integration tests under AddressSanitizer and UndefinedBehaviorSanitizer"
  ASAN_OPTIONS=exitcode=86 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=86 \
    ctest --test-dir build-asan -L integration -LE nnsight -j2 --output-on-failure
fi

if [ "${NDIF_FUZZ_SECONDS:-20}" != 0 ]; then
  bash scripts/fuzz.sh "${NDIF_FUZZ_SECONDS:-20}"
fi

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNDIF_WERROR=ON ${NDIF_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$jobs"

started_slurm=0
if [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null 2>&1 && ! sinfo >/dev/null 2>&1; then
  bash scripts/slurm-local.sh start
  started_slurm=1
fi
cleanup() { if [ $started_slurm = 1 ]; then bash scripts/slurm-local.sh stop; fi; }
trap cleanup EXIT

ctest --test-dir build --output-on-failure -j2 "$@"
