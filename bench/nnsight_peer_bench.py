#!/usr/bin/env python3
"""G4 through real nnsight, measured against the test peer (tests/peer/ndif_peer.py):

1. Bytes on the wire per batch against useful bytes: a sweep of the tiny Llama-style model, with the
   multipart request bodies (envelope and blob), the result downloads and the status polls that
   the peer counted.
2. The deviation table: the largest difference between what ndif-sweep stored and each prompt run
   alone through plain transformers, per model and dtype; and, for contrast, what the same padded
   batches give without position ids.

    .venv/bin/python bench/nnsight_peer_bench.py [--build build] [--prompts 240]

Needs the built binaries and data/tokenizers (scripts/setup.sh). Prints tables; figures are kept in
docs/performance.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

SOURCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE / "tests" / "integration"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=str(SOURCE / "build"))
    parser.add_argument("--prompts", type=int, default=240)
    args = parser.parse_args()
    os.environ.setdefault("NDIF_BUILD_DIR", str(Path(args.build).resolve()))
    import harness
    import realmodel as rm

    rm.build_models()
    peer = rm.Peer()
    env = harness.base_env(NDIF_API_KEY=rm.API_KEY, HF_HUB_CACHE=str(rm.hf_cache()))

    def sweep(tmp, lines, model, dtype, **fields):
        job_path, job = harness.make_job(tmp, lines, model=model, endpoint=peer.url, python=sys.executable,
                                         tokenizer=str(harness.tokenizer_file(rm.TOKENIZER[model])),
                                         probes=rm.PROBES[model], dtype=dtype, **fields)
        for key in ("encoder", "local"):
            job.pop(key)
        job_path.write_text(json.dumps(job))
        (Path(tmp) / "out.h5").unlink(missing_ok=True)
        result = subprocess.run([str(Path(args.build) / "bin" / "ndif-sweep"), "run", str(job_path),
                                 "--progress", "none"], env=env, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        return Path(tmp) / "out.h5"

    try:
        with tempfile.TemporaryDirectory() as tmp:
            lines = harness.varied_prompts(args.prompts, seed=7)
            lines = [l if l.strip() else "x" for l in lines]
            print("1. Wire bytes per batch through G4 (tiny Llama: 7 layers of 64 in float16, 2 positions)")
            before = peer.stats()
            out = sweep(tmp, lines, rm.LLAMA, "float16",
                        batch={"target_mb": 0.06, "max_prompts": 256, "max_tokens": 32768, "sort_by_length": True})
            after = peer.stats()
            with h5py.File(out, "r") as f:
                counts = f["batches/count"][()]
                received = f["batches/bytes"][()]
                layers = sum(f[f"acts/{p}"].shape[1] for p in f["acts"])
                positions, hidden = f["acts/resid"].shape[2], f["acts/resid"].shape[3]
            useful = counts * layers * positions * hidden * 2
            batches = len(counts)
            sent = after["request_body_bytes"] - before["request_body_bytes"]
            polls = after["polls"] - before["polls"]
            downloaded = after["result_body_bytes"] - before["result_body_bytes"]
            print(f"   {batches} batches of {counts.min()}-{counts.max()} prompts ({counts.sum()} in all)")
            print(f"   per batch, mean:  request body {sent / batches / 1e3:8.1f} kB (envelope + blob, multipart)")
            print(f"                     result        {received.mean() / 1e3:8.1f} kB received (zstd)  "
                  f"against {useful.mean() / 1e3:.1f} kB useful ({received.sum() / useful.sum():.3f} of it)")
            print(f"                     status polls  {polls / batches:8.1f}")
            print(f"   whole job: {sent + downloaded:,} bytes of HTTP bodies for {int(useful.sum()):,} useful bytes "
                  f"({(sent + downloaded) / useful.sum():.3f}x)")

            print("\n2. Largest |stored - the prompt alone through plain transformers| (bfloat16 weights), and the")
            print("   same padded batches through plain transformers without position ids")
            print(f"   {'model':28} {'dtype':9} {'ndif-sweep':>11} {'no position ids':>16}")
            texts = ["Hi there", "The cat sat on the mat", harness.long_text(60, seed=2)] + harness.varied_prompts(20, seed=3)
            texts = [t for t in texts if t.strip()]
            for model in (rm.LLAMA, rm.GPT2):
                tokens = rm.hf_tokens(model, texts)
                for dtype in ("float32", "bfloat16", "float16"):
                    out = sweep(tmp, texts, model, dtype, positions=[-1, 0])
                    with h5py.File(out, "r") as f:
                        stored = {name: f[f"acts/{name}"][()] for name in f["acts"]}
                        positions = f["prompts/positions"][()].tolist()
                    without = rm.padded_without_position_ids(model, rm.PROBES[model], tokens, positions, dtype)
                    worst_with = worst_without = 0.0
                    for k, t in enumerate(tokens):
                        alone = rm.alone_values(model, rm.PROBES[model], t, positions[k], dtype)
                        for name, values in alone.items():
                            worst_with = max(worst_with, float(np.abs(rm.as_float32(stored[name][k], dtype) - values).max()))
                            worst_without = max(worst_without, float(np.abs(without[name][k] - values).max()))
                    print(f"   {model:28} {dtype:9} {worst_with:11.5f} {worst_without:16.5f}")
    finally:
        peer.stop()


if __name__ == "__main__":
    main()
