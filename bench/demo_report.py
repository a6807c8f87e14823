"""Figures of a finished sweep: bytes received per batch against the useful bytes, and the padded
tokens that sorting by length saved.

    /usr/bin/python3 bench/demo_report.py jobs/demo.json out/demo.h5 [--ndif-sweep build/bin/ndif-sweep]

Useful bytes of a batch = rows x layers x positions x hidden x element size: exactly the activations
asked for. Received bytes are what the result download carried (torch.save container included).
The padding figure comes from `ndif-sweep plan --json` of the job with sort_by_length true and false.
"""

import argparse
import json
import pathlib
import subprocess
import tempfile

import h5py
import numpy as np


def plan(ndif_sweep, job_path, sort_by_length):
    job = json.loads(pathlib.Path(job_path).read_text())
    job.setdefault("batch", {})["sort_by_length"] = sort_by_length
    base = pathlib.Path(job_path).resolve().parent
    for key in ("tokenizer", "prompts", "output"):
        job[key] = str((base / job[key]).resolve())
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    out = subprocess.run([ndif_sweep, "plan", f.name, "--json"], check=True, capture_output=True, text=True).stdout
    pathlib.Path(f.name).unlink()
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("job")
    ap.add_argument("h5")
    ap.add_argument("--ndif-sweep", default="build/bin/ndif-sweep")
    args = ap.parse_args()

    with h5py.File(args.h5, "r") as f:
        count = f["batches/count"][...]
        received = f["batches/bytes"][...]
        done = f["batches/done"][...].astype(bool)
        row_bytes = sum(int(np.prod(d.shape[1:])) * d.dtype.itemsize for d in f["acts"].values())
        seconds = f["batches/seconds"][...]
    useful = count * row_bytes
    print(f"batches done            {done.sum()} of {len(done)}")
    print(f"row bytes (all probes)  {row_bytes}")
    print(f"useful bytes / batch    mean {useful[done].mean() / 1e6:.3f} MB, max {useful[done].max() / 1e6:.3f} MB")
    print(f"received bytes / batch  mean {received[done].mean() / 1e6:.3f} MB, max {received[done].max() / 1e6:.3f} MB")
    overhead = received[done].sum() / useful[done].sum() - 1
    print(f"received / useful       {received[done].sum()} / {useful[done].sum()} bytes "
          f"({'zstd-compressed results, ' if overhead < 0 else ''}{100 * overhead:+.2f}% against the useful bytes)")
    print(f"seconds / batch         mean {seconds[done].mean():.2f}, max {seconds[done].max():.2f}")

    sorted_plan = plan(args.ndif_sweep, args.job, True)
    unsorted_plan = plan(args.ndif_sweep, args.job, False)
    print(f"tokens                  {sorted_plan['tokens']}")
    print(f"padded tokens, sorted   {sorted_plan['padded_tokens']} in {sorted_plan['batches']} batches")
    print(f"padded tokens, unsorted {unsorted_plan['padded_tokens']} in {unsorted_plan['batches']} batches")
    saved = unsorted_plan["padded_tokens"] - sorted_plan["padded_tokens"]
    print(f"length sort saved       {saved} padded tokens "
          f"({100 * saved / unsorted_plan['padded_tokens']:.1f}% of the unsorted total)")


if __name__ == "__main__":
    main()
