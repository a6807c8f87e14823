#!/usr/bin/env bash
# Runs the demo sweep (jobs/demo.json) on the bundled ndif-local with 2 MPI ranks and shows the result.
#   usage: scripts/demo.sh [ranks]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
ranks=${1:-2}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl_tcp_if_include=lo
export OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p out
build/bin/ndif-sweep plan jobs/demo.json
start=$(date +%s%N)
mpirun -np "$ranks" build/bin/ndif-sweep run jobs/demo.json --progress lines
end=$(date +%s%N)
build/bin/ndif-sweep status out/demo.h5
build/bin/ndif-sweep verify out/demo.h5
ms=$(((end - start) / 1000000))
printf 'demo: %d ranks, wall time %d.%03d s\n' "$ranks" $((ms / 1000)) $((ms % 1000))
echo "demo: output is $here/out/demo.h5 (read it with h5py, or: build/bin/ndif-sweep export out/demo.h5 --to out/demo-npy)"
