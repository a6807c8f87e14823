#!/usr/bin/env bash
# Builds (if needed) and runs every test: unit, MPI, integration against ndif-local, SLURM.
# The SLURM tests start the project's own single-node cluster (scripts/slurm-local.sh) and stop it
# at the end.
#   usage: scripts/test.sh [ctest args...]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo ${NDIF_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$(nproc)"

# mpirun refuses root without these; loopback-only transports keep tests off the network.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo
export OMPI_MCA_rmaps_base_oversubscribe=1

started_slurm=0
if [ "$(id -u)" = 0 ] && command -v slurmctld >/dev/null 2>&1 && ! sinfo >/dev/null 2>&1; then
  bash scripts/slurm-local.sh start
  started_slurm=1
fi
cleanup() { [ $started_slurm = 1 ] && bash scripts/slurm-local.sh stop || true; }
trap cleanup EXIT

ctest --test-dir build --output-on-failure -j2 "$@"
