#!/usr/bin/env python3
"""The run loop, measured against ndif-local:

1. CPU while waiting: every rank's CPU seconds (utime + stime, the counters getrusage reports) over
   60 s while 8 jobs wait in the queue of `ndif-local --latency-ms 600000`, for 1 rank (8 in flight;
   also its whole life through wait4's rusage) and 2 ranks (4 each); mpirun's own CPU beside them.
2. NDIF submissions after a kill: 8 batches all queued on 2 ranks, rank 1 killed with SIGKILL, the
   jobs left to finish on the server, then a restart: what the server counted (GET /stats).
3. Time from the last result to exit: from the moment the server has served the last result
   (/stats polled every 5 ms) to the exit of the run, for 1 and 4 ranks.

    python3 bench/loop_bench.py [--build build] [--seconds 60] [--only cpu,kill,exit]

Works with older builds too (before the journal) for before/after figures. Figures are kept in
docs/performance.md.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE / "tests" / "integration"))
import harness  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def stats(server):
    with urllib.request.urlopen(server.url + "/stats", timeout=10) as reply:
        return json.loads(reply.read())


def cpu_seconds(pid):
    """utime + stime of a live process, in seconds (/proc/PID/stat fields 14 and 15)."""
    text = harness.proc_read(pid, "stat").decode("utf-8", "replace")
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"loop_bench: timed out waiting for {what}")


class Scratch:
    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="ndif-loop-bench-")
        self.dir = Path(self.tmp.name)
        self.servers = []

    def server(self, *args):
        s = harness.LocalServer(self.dir, "--layers", "4", "--hidden", "32", *args)
        s.start()
        self.servers.append(s)
        return s

    def job(self, batches, name):
        directory = self.dir / name
        directory.mkdir()
        lines = harness.varied_prompts(2 * batches, seed=7)
        job_path, _ = harness.make_job(directory, lines, batch={"target_mb": 32, "max_prompts": 2,
                                                                  "max_tokens": 32768, "sort_by_length": True},
                                     # The default poll interval (the tests poll faster) and room
                                     # for a 60-s queue.
                                     timeouts={"connect_s": 10, "request_s": 60, "job_s": 900,
                                               "poll_interval_s": 0.5})
        return job_path, directory / "out.h5"

    def close(self):
        for s in self.servers:
            s.stop()
        self.tmp.cleanup()


def start(job, server, ranks, inflight, progress="none"):
    command = harness.sweep_cmd("run", job, "--endpoint", server.url, "--max-inflight", inflight,
                                "--progress", progress, ranks=ranks)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, env=harness.base_env(), start_new_session=True)


def rank_pids(proc, ranks):
    if ranks is None:
        return {0: proc.pid}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = harness.mpi_rank_pids(proc.pid)
        if len(found) == ranks:
            return found
        time.sleep(0.05)
    raise SystemExit("loop_bench: the ranks did not start")


def bench_cpu(scratch, seconds):
    print(f"1. CPU while 8 jobs wait in a 600-s queue, measured over {seconds} s")
    print(f"   {'ranks':>5}  {'rank':>4}  {'CPU s':>7}  {'% of a core':>11}")
    for ranks, inflight in ((None, 8), (2, 4)):
        # A queue longer than the measurement, so that no job finishes inside it.
        server = scratch.server("--latency-ms", 600000, "--workers", 8)
        job, _ = scratch.job(8, f"cpu{ranks}")
        proc = start(job, server, ranks, inflight)
        wait_for(lambda: stats(server)["submitted"] >= 8, 60, "8 submissions")
        time.sleep(1)  # past start-up
        pids = rank_pids(proc, ranks)
        watched = dict(pids)
        if ranks is not None:
            watched["mpirun"] = proc.pid
        before = {k: cpu_seconds(p) for k, p in watched.items()}
        time.sleep(seconds)
        after = {k: cpu_seconds(p) for k, p in watched.items()}
        for k in watched:
            used = after[k] - before[k]
            print(f"   {ranks or 1:>5}  {k:>4}  {used:7.2f}  {100 * used / seconds:10.2f}%")
        if ranks is None:
            os.kill(proc.pid, signal.SIGTERM)
            _, _, usage = os.wait4(proc.pid, 0)
            print(f"   {1:>5}  {'life':>4}  {usage.ru_utime + usage.ru_stime:7.2f}  "
                  f"(getrusage via wait4: whole process, start-up and drain included)")
        else:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def bench_kill(scratch):
    print("2. NDIF submissions after SIGKILL of rank 1 while all 8 batches wait in a 6-s queue (2 ranks x 4)")
    server = scratch.server("--latency-ms", 6000, "--workers", 8)
    job, _ = scratch.job(8, "kill")
    proc = start(job, server, 2, 4)
    wait_for(lambda: stats(server)["submitted"] >= 8, 60, "8 submissions")
    time.sleep(1.0)  # every job id journaled (the journal is written as each submit is answered)
    pids = rank_pids(proc, 2)
    os.kill(pids[1], signal.SIGKILL)
    proc.wait(timeout=60)
    wait_for(lambda: stats(server)["completed"] >= 8, 60, "the jobs to finish on the server")
    started = time.monotonic()
    result = subprocess.run(harness.sweep_cmd("run", job, "--endpoint", server.url, "--max-inflight", 4,
                                              "--progress", "none", ranks=2),
                            capture_output=True, env=harness.base_env(), timeout=300)
    elapsed = time.monotonic() - started
    counts = stats(server)
    print(f"   restart: exit {result.returncode} after {elapsed:.1f} s; server counted {counts['submitted']} "
          f"submissions (8 batches), {counts['completed']} completed, {counts['downloaded']} downloaded")


def bench_exit(scratch):
    print("3. Time from the last result served to the run's exit (16 batches, 200-ms queue)")
    for ranks in (None, 4):
        server = scratch.server("--latency-ms", 200, "--workers", 8)
        job, _ = scratch.job(16, f"exit{ranks}")
        proc = start(job, server, ranks, 2)
        last = None
        while proc.poll() is None:
            if last is None and stats(server)["downloaded"] >= 16:
                last = time.monotonic()
            time.sleep(0.005)
        ended = time.monotonic()
        if last is None:
            print(f"   {ranks or 1} rank(s): the run ended before the server counted 16 downloads")
            continue
        print(f"   {ranks or 1} rank(s): {1000 * (ended - last):.0f} ms (exit {proc.returncode})")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=str(SOURCE / "build"))
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--only", default="cpu,kill,exit")
    args = parser.parse_args()
    harness.BUILD = Path(args.build).resolve()
    print(f"build: {harness.BUILD}")
    scratch = Scratch()
    try:
        parts = args.only.split(",")
        if "cpu" in parts:
            bench_cpu(scratch, args.seconds)
        if "kill" in parts:
            bench_kill(scratch)
        if "exit" in parts:
            bench_exit(scratch)
    finally:
        scratch.close()


if __name__ == "__main__":
    main()
