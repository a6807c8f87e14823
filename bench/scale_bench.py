#!/usr/bin/env python3
"""Planning and file creation at scale, and the restart scan.

For each prompt count N (default 10^5 and 10^6) it writes a prompts file like a large sweep's
(about 220 bytes and 40 Llama-3.1 tokens per prompt, an id and a meta object each) and a job of 80
layers of 8192 (Llama-3.1-70B's residual stream), one position, float16, on the bundled ndif-local.
Then, each in a fresh process:

- `plan`: `ndif-sweep plan` (read, tokenize, plan), wall time and peak RSS;
- `create`: `ndif-sweep run` until it reports the file created (read, tokenize, plan, create the
  file), wall time and peak RSS (VmHWM of the rank, read just before it is stopped), the file's
  size on disk (no row is written yet, so this is what the plan and per-prompt datasets cost) and
  its apparent size;
- `status`: `ndif-sweep status --json` on that file: the missing batches, as a restart finds them;
- `restart`: `ndif-sweep run` again until it says what is left to do (it checks the file, reads
  the done flags and the journal).

`create` runs with NDIF_SWEEP_PHASE_TIMES=1, and `file step s` is the time rank 0 reports for the
step that creates the file (strings, positions, publish: docs/design.md), on its own: the wall
times of `plan` and `create` move by a second between runs on shared cores. `--positions K` reads K
positions a prompt (the last K tokens) instead of one, for the memory of rank 0 and the parts;
`--layers L` reads L layers instead of 80 (the file's apparent size must stay within what the file
system allows: 10^7 rows of 80 layers x 16 positions would be 210 TB).

    /usr/bin/python3 bench/scale_bench.py [--build build] [--counts 100000,1000000] [--ranks 1]
        [--positions 1] [--layers 80] [--dir /tmp/ndif-scale-bench]

The prompts files are kept in DIR and reused. Figures are kept in docs/performance.md.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE / "tests" / "integration"))
import harness  # noqa: E402

WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from at which "
         "but have an they you were her she there one all we can their has been if more when will would "
         "who so no résumé naïve 東京 🙂 1234 don't").split()


def prompts_file(directory, n):
    path = directory / f"prompts-{n}.jsonl"
    if path.exists():
        return path
    rng = random.Random(n)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(25, 45)))
            f.write(json.dumps({"prompt": text, "id": f"p{i}", "meta": {"split": i % 7}},
                               ensure_ascii=False) + "\n")
    tmp.rename(path)
    return path


def vm_hwm_kb(pid):
    for line in harness.proc_read(pid, "status").decode().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def run_until(command, marker, env):
    """Starts `command`, waits for `marker` on stderr; returns (seconds, peak RSS MB of the ranks, the
    seconds of the file's creation step as rank 0 reports them, or None)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)
    peak = 0
    step = None
    for line in proc.stderr:
        if "phase times:" in line:
            found = re.search(r"\bcreate ([0-9.]+) s", line)
            step = float(found.group(1)) if found else None
        if marker in line:
            seconds = time.monotonic() - t0
            pids = list(harness.mpi_rank_pids(proc.pid).values()) if command[0] == "mpirun" else [proc.pid]
            if not pids:
                raise SystemExit("scale_bench: found no rank of the run")
            peak = max(vm_hwm_kb(p) for p in pids) / 1024
            servers = [p for p in harness.descendants(proc.pid)
                       if harness.proc_read(p, "comm").strip() == b"ndif-local"]
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            # The bundled server ends with its sweep once the jobs it is computing are done; the
            # next measurement must not share the cores with it.
            deadline = time.monotonic() + 120
            while any(harness.proc_read(p, "comm").strip() == b"ndif-local" for p in servers):
                if time.monotonic() > deadline:
                    raise SystemExit(f"scale_bench: ndif-local {servers} still runs 120 s after its sweep")
                time.sleep(0.05)
            return seconds, peak, step
        if "error" in line:
            os.killpg(proc.pid, signal.SIGKILL)
            raise SystemExit(f"scale_bench: {line.strip()}")
    proc.wait()
    raise SystemExit(f"scale_bench: the run ended ({proc.returncode}) before printing {marker!r}")


def timed(command, env):
    t0 = time.monotonic()
    result = subprocess.run(["/usr/bin/time", "-f", "%M"] + command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"scale_bench: {command} failed: {result.stderr}")
    return time.monotonic() - t0, int(result.stderr.strip().splitlines()[-1]) / 1024, result.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(SOURCE / "build"))
    ap.add_argument("--counts", default="100000,1000000")
    ap.add_argument("--ranks", type=int, default=1)
    ap.add_argument("--positions", type=int, default=1)
    ap.add_argument("--layers", type=int, default=80)
    ap.add_argument("--dir", default="/tmp/ndif-scale-bench")
    args = ap.parse_args()
    harness.BUILD = Path(args.build).resolve()
    env = dict(harness.base_env(), NDIF_SWEEP_PHASE_TIMES="1")
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"{'prompts':>8} {'MB':>6} {'plan s':>7} {'plan MB':>8} {'create s':>8} {'create MB':>9} "
          f"{'file step s':>11} {'file MB':>8} {'apparent GB':>11} {'status s':>8} {'restart s':>9} "
          f"{'restart MB':>10}")
    for n in [int(c) for c in args.counts.split(",")]:
        prompts = prompts_file(directory, n)
        out = directory / f"out-{n}.h5"
        out.unlink(missing_ok=True)
        (directory / "job").mkdir(exist_ok=True)
        job_path, _ = harness.make_job(directory / "job", [""], prompts=str(prompts), output=str(out),
                                       local={"layers": 80, "hidden": 8192, "seed": 0,
                                              "model_dtype": "bfloat16"},
                                       positions=list(range(-args.positions, 0)),
                                       probes=[{"name": "resid", "module": "model.layers.{layer}",
                                                "layers": f"0:{args.layers}"}],
                                       batch={"target_mb": 64, "max_prompts": 256, "max_tokens": 32768,
                                              "sort_by_length": True})
        plan_s, plan_mb, _ = timed([str(harness.sweep_bin()), "plan", str(job_path)], env)
        command = harness.sweep_cmd("run", job_path, "--progress", "none",
                                    ranks=args.ranks if args.ranks > 1 else None)
        create_s, create_mb, step_s = run_until(command, "prompts in", env)
        file_mb = out.stat().st_blocks * 512 / 1e6
        apparent_gb = out.stat().st_size / 1e9
        status_s, _, text = timed([str(harness.sweep_bin()), "status", str(out), "--json"], env)
        json.loads(text)
        restart_s, restart_mb, _ = run_until(command, "to go", env)
        step = f"{step_s:>11.2f}" if step_s is not None else f"{'-':>11}"
        print(f"{n:>8} {prompts.stat().st_size / 1e6:>6.0f} {plan_s:>7.2f} {plan_mb:>8.0f} {create_s:>8.2f} "
              f"{create_mb:>9.0f} {step} {file_mb:>8.0f} {apparent_gb:>11.0f} {status_s:>8.2f} "
              f"{restart_s:>9.2f} {restart_mb:>10.0f}", flush=True)
        out.unlink()


if __name__ == "__main__":
    main()
