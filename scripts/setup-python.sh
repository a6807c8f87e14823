#!/usr/bin/env bash
# Makes the pinned Python environment of the real-nnsight tests and benchmarks in .venv/ (or DIR):
# Python 3.11 (the CPU build of torch on the machines' disk is for 3.11), the packages of
# tests/python/requirements.txt, and the project's own package (python/) in editable mode.
# Idempotent: an environment whose requirements stamp matches is left as it is.
#   usage: scripts/setup-python.sh [DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$here/.venv}
requirements=$here/tests/python/requirements.txt

python=""
for candidate in python3.11 /usr/bin/python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
    python=$(command -v "$candidate")
    break
  fi
done
if [ -z "$python" ]; then
  echo "setup-python: no Python 3.11 with venv found (the CPU torch wheel is for 3.11)" >&2
  exit 1
fi

stamp=$venv/.requirements.sha256
want=$(cat "$requirements" "$here/python/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup-python: making $venv with $python"
rm -rf "$venv"
"$python" -m venv "$venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# pip names every configured index it does not find a package in; only real problems are shown.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# torch first, alone: it is the one wheel that must come from the local disk.
quiet "$venv/bin/pip" install -q "$(grep -E '^torch==' "$requirements")"
quiet "$venv/bin/pip" install -q -r "$requirements"
quiet "$venv/bin/pip" install -q --no-deps -e "$here/python"
"$venv/bin/python" -c 'import torch, nnsight, transformers; assert torch.__version__.endswith("+cpu"), torch.__version__'
echo "$want" >"$stamp"
echo "setup-python: $venv ready (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), nnsight $("$venv/bin/python" -c 'import nnsight; print(nnsight.__version__)'))"
