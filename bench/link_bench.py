#!/usr/bin/env python3
"""How much of a shaped link a sweep uses, against ndif-local.

One `ndif-local --bandwidth-mbps B --latency-ms L --workers W` (defaults 1, 1000, 8: every job
queues a second, the results share 1 MB/s) serves every run; each run is a fresh output file of
--batches batches of 8 distinct prompts, one position each, so every batch saves the same bytes.
The bench polls the server's /stats every 20 ms and takes the steady state as the time between the
10th and the 90th percentile of the run's downloads, so the first queueing and the last stragglers
do not count:

    share = result bytes the server sent in that time / the time / link rate

The link carries what the server sends: the result file (torch.save container, zstd for G4).
`wire/useful` is all result bytes of the run over the saved activations (rows x layers x
positions x hidden x 2); below 1 when zstd shrinks the synthetic values, which real activations
barely allow. The table covers ranks 1, 2, 4 and 8 with max_inflight 1 to 4.

Each cell is run twice: `serial` keeps a job's slot until its batch is written
(NDIF_SWEEP_BENCH_SERIAL=1, the loop before downloads overlapped queueing; with 1 rank and 1 in
flight, the one-batch-at-a-time loop: submit, wait, download, write, submit the next), `overlap` is
a run as users get it, where a downloading job gives its slot to the next batch.

    /usr/bin/python3 bench/link_bench.py [--build build] [--ranks 1,2,4,8] [--inflight 1,2,3,4]
        [--batches 48] [--protocol g4|g2]

Figures are kept in docs/performance.md.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE / "tests" / "integration"))
import harness  # noqa: E402

LAYERS, HIDDEN, ROWS = 16, 2048, 8  # 64 KiB per row, 512 KiB per batch in float16
PROBE_LAYERS = "0:16"


def stats(url):
    with urllib.request.urlopen(url + "/stats", timeout=10) as reply:
        return json.loads(reply.read())


def downloads_over_time(url, stop, out):
    """Appends (monotonic time, downloads so far, result bytes sent so far) every 20 ms until `stop`."""
    while not stop.is_set():
        try:
            s = stats(url)
        except OSError:  # a poll that timed out is a gap in the samples, not the end of them
            continue
        out.append((time.monotonic(), s["downloaded"], s["bytes_sent"]))
        time.sleep(0.02)


def steady_state(samples, first, batches):
    """(seconds, downloads, wire bytes) between the 10th and 90th percentile of this run's downloads."""
    lo, hi = first + max(1, batches // 10), first + batches - max(1, batches // 10)
    a = next(s for s in samples if s[1] >= lo)
    b = next(s for s in samples if s[1] >= hi)
    return b[0] - a[0], b[1] - a[1], b[2] - a[2]


def measure(server, job_path, tmp, ranks, inflight, serial, args, env):
    """One run into a fresh file: (steady share of the link, wall s, wire/useful).

    Completions come in bursts (downloads that share the link end together), so the share is taken
    from the bytes sent in the window, never from the count of downloads in it."""
    out = tmp / f"out-{ranks}-{inflight}-{int(serial)}.h5"
    useful = ROWS * LAYERS * 1 * HIDDEN * 2
    before = stats(server.url)
    samples, stop = [], threading.Event()
    watcher = threading.Thread(target=downloads_over_time, args=(server.url, stop, samples))
    watcher.start()
    t0 = time.monotonic()
    command = harness.sweep_cmd("run", job_path, "--output", out, "--max-inflight", inflight,
                                "--progress", "none", ranks=ranks if ranks > 1 else None)
    run_env = dict(env, NDIF_SWEEP_BENCH_SERIAL="1" if serial else "0")
    result = subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    stop.set()
    watcher.join()
    if result.returncode != 0:
        raise SystemExit(f"link_bench: run failed ({result.returncode}): {result.stderr}")
    out.unlink()
    seconds, _, wire = steady_state(samples, before["downloaded"], args.batches)
    total_wire = stats(server.url)["bytes_sent"] - before["bytes_sent"]
    return wire / seconds / (args.bandwidth_mbps * 1e6), wall, total_wire / (args.batches * useful)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(SOURCE / "build"))
    ap.add_argument("--ranks", default="1,2,4,8")
    ap.add_argument("--inflight", default="1,2,3,4")
    ap.add_argument("--batches", type=int, default=48)
    ap.add_argument("--protocol", default="g4", choices=["g4", "g2"])
    ap.add_argument("--bandwidth-mbps", type=float, default=1.0)
    ap.add_argument("--latency-ms", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=8)
    args = ap.parse_args()
    harness.BUILD = Path(args.build).resolve()
    env = harness.base_env(NDIF_API_KEY="bench")

    with tempfile.TemporaryDirectory(prefix="ndif-link-bench-") as tmp:
        tmp = Path(tmp)
        server = harness.LocalServer(tmp, "--layers", LAYERS, "--hidden", HIDDEN, "--workers", args.workers,
                                     "--latency-ms", args.latency_ms, "--bandwidth-mbps", args.bandwidth_mbps,
                                     env=env)
        server.start()
        try:
            # Distinct prompts (equal ones would make results that zstd shrinks tenfold); every batch
            # holds ROWS rows of one position, so each saves the same bytes whatever the lengths.
            prompts = harness.varied_prompts(ROWS * args.batches, seed=7)
            job_path, _ = harness.make_job(
                tmp, prompts, endpoint=server.url, protocol=args.protocol,
                local={"layers": LAYERS, "hidden": HIDDEN, "seed": 0, "model_dtype": "bfloat16"},
                positions=[-1], probes=[{"name": "resid", "module": "model.layers.{layer}",
                                         "layers": PROBE_LAYERS}],
                batch={"target_mb": 1000, "max_prompts": ROWS, "max_tokens": 32768, "sort_by_length": True},
                timeouts={"connect_s": 10, "request_s": 60, "job_s": 600, "poll_interval_s": 0.5})
            useful = ROWS * LAYERS * 1 * HIDDEN * 2
            print(f"ndif-local --bandwidth-mbps {args.bandwidth_mbps:g} --latency-ms {args.latency_ms} "
                  f"--workers {args.workers}; {args.batches} batches of {useful / 1e6:.3f} MB useful, "
                  f"protocol {args.protocol}")
            print(f"{'ranks':>5} {'inflight':>8} {'serial':>7} {'wall s':>7} {'overlap':>7} {'wall s':>7} "
                  f"{'wire/useful':>11}")
            for ranks in [int(r) for r in args.ranks.split(",")]:
                for inflight in [int(m) for m in args.inflight.split(",")]:
                    cells = []
                    for serial in (True, False):
                        cells.append(measure(server, job_path, tmp, ranks, inflight, serial, args, env))
                    (s_share, s_wall, _), (o_share, o_wall, ratio) = cells
                    print(f"{ranks:>5} {inflight:>8} {s_share:>7.3f} {s_wall:>7.1f} {o_share:>7.3f} {o_wall:>7.1f} "
                          f"{ratio:>11.4f}", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
