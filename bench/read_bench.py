#!/usr/bin/env python3
"""Reading a large sweep with the ndif_sweep package in bounded memory.

Writes a sweep of about --size-gb GB with `ndif-sweep run` on the bundled ndif-local (80 layers of
4096, like Llama-3.1-70B's residual stream, one position per prompt, float16), then, in a fresh
process each time, times `open_sweep` plus `analyze.layer_norms` over every layer of every row
(the whole file read in chunks of rows) and reports the peak RSS of that process. With --cold the
page cache is dropped before the read (root; /proc/sys/vm/drop_caches), so that the disk is read.

    /usr/bin/python3 bench/read_bench.py [--build build] [--size-gb 10] [--dir DIR] [--cold]

The file is kept in DIR (default /tmp/ndif-read-bench) and reused when it is already complete.
Figures are kept in docs/performance.md.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]

LAYERS, HIDDEN = 80, 4096

READER = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
t0 = time.perf_counter()
import ndif_sweep
from ndif_sweep import analyze
s = ndif_sweep.open_sweep(sys.argv[1])
rows = s.rows
t1 = time.perf_counter()
norms = analyze.layer_norms(s, "resid", rows=rows)
t2 = time.perf_counter()
print(json.dumps({"open_s": t1 - t0, "norms_s": t2 - t1, "rows": int(rows.size),
                  "first_norms": [round(float(x), 4) for x in norms[:3]],
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_file(directory, size_gb, build):
    row_bytes = LAYERS * HIDDEN * 2
    n = int(size_gb * 1e9 // row_bytes)
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "big.h5"
    job = {
        "model": "synthetic/llama-70b-like",
        "endpoint": "local",
        "encoder": "graph",
        "local": {"layers": LAYERS, "hidden": HIDDEN, "seed": 0, "model_dtype": "bfloat16"},
        "tokenizer": str(SOURCE / "data" / "tokenizers" / "llama3_1.json"),
        "prompts": "prompts.jsonl",
        "positions": [-1],
        "probes": [{"name": "resid", "module": "model.layers.{layer}", "output_index": 0, "layers": f"0:{LAYERS}"}],
        "dtype": "float16",
        "batch": {"target_mb": 64},
        "output": str(out),
    }
    (directory / "job.json").write_text(json.dumps(job, indent=2))
    with open(directory / "prompts.jsonl", "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": str(i), "meta": {"kind": "ab"[i % 2]}}) + "\n")  # short: the server computes every token
    env = dict(os.environ, NDIF_API_KEY=os.environ.get("NDIF_API_KEY", "bench"))
    started = time.monotonic()
    result = subprocess.run([str(build / "bin" / "ndif-sweep"), "run", str(directory / "job.json"), "--progress", "none"],
                            env=env)
    if result.returncode != 0:
        raise SystemExit(f"read_bench: the sweep exited {result.returncode}")
    print(f"wrote {out}: {n} prompts x {LAYERS} layers x 1 position x {HIDDEN}, "
          f"{out.stat().st_size / 1e9:.2f} GB in {time.monotonic() - started:.0f} s")
    return out


def complete(path):
    if not path.exists():
        return False
    result = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]);"
                             "import ndif_sweep; sys.exit(0 if ndif_sweep.open_sweep(sys.argv[1]).complete else 1)",
                             str(path), str(SOURCE / "python")])
    return result.returncode == 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=str(SOURCE / "build"))
    parser.add_argument("--size-gb", type=float, default=10)
    parser.add_argument("--dir", default="/tmp/ndif-read-bench")
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()
    directory = Path(args.dir)
    out = directory / "big.h5"
    if not complete(out):
        out = make_file(directory, args.size_gb, Path(args.build))
    size = out.stat().st_size
    for run in ("cold", "warm") if args.cold else ("warm", "warm"):
        if run == "cold":
            subprocess.run(["sync"])
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        r = subprocess.run([sys.executable, "-c", READER, str(out), str(SOURCE / "python")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        m = json.loads(r.stdout)
        total = m["open_s"] + m["norms_s"]
        print(f"{run}: {size / 1e9:.2f} GB, {m['rows']} rows: open_sweep {m['open_s']:.2f} s, layer_norms "
              f"{m['norms_s']:.1f} s ({size / 1e9 / total:.2f} GB/s), peak RSS {m['max_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
