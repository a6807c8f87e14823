#!/usr/bin/env python3
"""HDF5 chunk shapes of /acts/<probe> compared for the write and the analysis patterns.

One dataset of N rows x L layers x 1 position x H hidden, float16 (default 2048 x 80 x 1 x 8192,
2.7 GB: Llama-3.1-70B's residual stream), written and read through h5py with each chunk shape:

- `rows`:   (c, L, P, H), c rows of every layer per chunk, about 2 MiB (what ndif-sweep creates);
- `layer`:  (c, 1, P, H), c rows of one layer per chunk, about 2 MiB;
- `square`: (c, L/8, P, H), a middle way.

Patterns, each timed with the page cache dropped first (root), so that the disk is read:

- write: batches of 32 rows in a sorted-by-length order (a random permutation: each batch's rows
  are scattered over the file), every layer of each row, as a run writes them;
- one layer: layer L/2 of every row, the analysis pattern (a probe per layer, a norm per layer);
- one batch: every layer of 32 scattered rows, as `export` or a per-prompt look reads them.

    /usr/bin/python3 bench/layout_bench.py [--rows 2048] [--layers 80] [--hidden 8192] [--dir /tmp]

Figures are kept in docs/performance.md.
"""

import argparse
import os
import time
from pathlib import Path

import h5py
import numpy as np

CHUNK_BYTES = 2 << 20


def drop_caches():
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def chunk_shapes(rows, layers, hidden):
    row_layer = hidden * 2
    shapes = {}
    c = max(1, CHUNK_BYTES // (row_layer * layers))
    shapes["rows"] = (min(c, rows), layers, 1, hidden)
    c = max(1, CHUNK_BYTES // row_layer)
    shapes["layer"] = (min(c, rows), 1, 1, hidden)
    group = max(1, layers // 8)
    c = max(1, CHUNK_BYTES // (row_layer * group))
    shapes["square"] = (min(c, rows), group, 1, hidden)
    return shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=80)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()
    n, layers, hidden = args.rows, args.layers, args.hidden
    gb = n * layers * hidden * 2 / 1e9
    rng = np.random.default_rng(0)
    order = rng.permutation(n)
    batch_rows = [np.sort(order[k:k + args.batch]) for k in range(0, n, args.batch)]
    data = rng.integers(0, 0x7000, size=(args.batch, layers, 1, hidden), dtype=np.uint16).view(np.float16)
    cold = drop_caches()
    print(f"{n} rows x {layers} layers x 1 x {hidden}, float16, {gb:.2f} GB; page cache "
          f"{'dropped before each pattern' if cold else 'NOT dropped (not root)'}")
    print(f"{'chunks':<8} {'shape':<22} {'write s':>8} {'GB/s':>6} {'one layer s':>11} {'MB read':>8} "
          f"{'one batch s':>11}")
    for name, shape in chunk_shapes(n, layers, hidden).items():
        path = Path(args.dir) / f"ndif-layout-bench-{name}.h5"
        path.unlink(missing_ok=True)
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("acts", shape=(n, layers, 1, hidden), dtype=np.float16, chunks=shape)
            drop_caches()
            t0 = time.perf_counter()
            for rows in batch_rows:
                # h5py takes a sorted list of rows as one selection, as the run loop's runs of rows.
                ds[rows.tolist(), ...] = data[:len(rows)]
            f.flush()
            os.sync()
            write_s = time.perf_counter() - t0
        drop_caches()
        reads_before = read_bytes()
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            ds = f["acts"]
            layer = ds[:, layers // 2, 0, :]
        one_layer_s = time.perf_counter() - t0
        read_mb = (read_bytes() - reads_before) / 1e6
        assert layer.shape == (n, hidden)
        drop_caches()
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            block = f["acts"][batch_rows[len(batch_rows) // 2].tolist(), ...]
        one_batch_s = time.perf_counter() - t0
        assert block.shape[0] == len(batch_rows[len(batch_rows) // 2])
        print(f"{name:<8} {str(shape):<22} {write_s:>8.2f} {gb / write_s:>6.2f} {one_layer_s:>11.2f} "
              f"{read_mb:>8.0f} {one_batch_s:>11.2f}", flush=True)
        path.unlink()


def read_bytes():
    """Bytes this process read from storage so far (/proc/self/io read_bytes)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


if __name__ == "__main__":
    main()
