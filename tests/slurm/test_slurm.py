"""ndif-sweep as a SLURM batch job on a real (single-node) cluster: jobs/slurm/sweep.sbatch with 2
tasks under `srun --mpi=pmix`, and the time-limit path: the early-warning SIGUSR1 drains the run
(exit 3), the script requeues the job, and the restarted job (SLURM_RESTART_COUNT=1) finishes the
missing batches. Every stored value is checked against the synthetic model."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402
from harness import Expectation, check_file, make_job  # noqa: E402

import h5py  # noqa: E402


def cluster_up():
    if not shutil.which("sbatch"):
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    return probe.returncode == 0 and any(state in probe.stdout for state in ("idle", "mix", "alloc"))


def job_fields(job_id):
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True).stdout
    fields = {}
    for item in out.split():
        if "=" in item:
            key, value = item.split("=", 1)
            fields[key] = value
    return fields


class SlurmSweep(harness.TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self, "ndif-sweep", "ndif-local")
        self.jobs = []
        self.addCleanup(self.cancel_jobs)

    def cancel_jobs(self):
        for job_id in self.jobs:
            subprocess.run(["scancel", str(job_id)], capture_output=True)

    def submit(self, job_path, *extra):
        script = harness.SOURCE / "jobs" / "slurm" / "sweep.sbatch"
        env = harness.base_env(NDIF_SWEEP_BIN=str(harness.sweep_bin()))
        out = subprocess.run(["sbatch", "--parsable", "--ntasks=2", f"--chdir={self.dir}",
                              f"--output={self.dir}/slurm-%j.out", str(script), str(job_path), *extra],
                             capture_output=True, text=True, env=env, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        job_id = int(out.stdout.strip().split(";")[0])
        self.jobs.append(job_id)
        return job_id

    def log(self, job_id):
        path = self.dir / f"slurm-{job_id}.out"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def wait_state(self, job_id, states, timeout=300, **want):
        deadline = time.time() + timeout
        fields = {}
        while time.time() < deadline:
            fields = job_fields(job_id)
            if fields.get("JobState") in states and all(fields.get(k) == v for k, v in want.items()):
                return fields
            time.sleep(0.2)
        self.fail(f"job {job_id} never reached {states} {want}: {fields}\n{self.log(job_id)}")

    def test_batch_job_with_two_tasks_completes_exactly(self):
        lines = harness.varied_prompts(40, seed=11)
        job_path, job = make_job(self.dir, lines, batch={"target_mb": 0.002})
        job_id = self.submit(job_path)
        fields = self.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
        self.assertEqual(fields["JobState"], "COMPLETED", self.log(job_id))
        self.assertEqual(fields["ExitCode"], "0:0")
        rows, _ = check_file(self, self.dir / "out.h5", Expectation(job, lines))
        self.assertEqual(rows, len(lines))
        with h5py.File(self.dir / "out.h5", "r") as f:
            self.assertEqual(f["runs/0"].attrs["ranks"], 2)
            self.assertEqual(harness.attr_str(f["runs/0"].attrs["slurm_job_id"]), str(job_id))

    def test_early_warning_drains_then_requeued_job_finishes(self):
        server = self.start_server("--layers", "4", "--hidden", "32", "--latency-ms", "400", "--workers", "2")
        lines = harness.varied_prompts(40, seed=12)
        job_path, job = make_job(self.dir, lines, batch={"target_mb": 0.002}, max_inflight=1)
        job_id = self.submit(job_path, "--endpoint", server.url)
        self.wait_state(job_id, {"RUNNING"}, timeout=60)
        deadline = time.time() + 120
        while time.time() < deadline:
            status = harness.status_json(self.dir / "out.h5")
            if status and 2 <= status["batches"]["done"] < status["batches"]["total"] - 4:
                break
            time.sleep(0.2)
        else:
            self.fail("the run never got partly done:\n" + self.log(job_id))
        # What `sbatch --signal=B:USR1@120` does before the time limit.
        subprocess.run(["scancel", "--signal=USR1", "--batch", str(job_id)], check=True)
        fields = self.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=400, Restarts="1")
        log = self.log(job_id)
        self.assertEqual(fields["JobState"], "COMPLETED", log)
        self.assertIn("draining", log)
        self.assertIn("requeueing", log)
        rows, _ = check_file(self, self.dir / "out.h5", Expectation(job, lines))
        self.assertEqual(rows, len(lines))
        with h5py.File(self.dir / "out.h5", "r") as f:
            runs = [f["runs"][k] for k in sorted(f["runs"], key=int)]
            self.assertEqual([harness.attr_str(r.attrs["outcome"]) for r in runs], ["drained", "complete"])
            self.assertEqual([int(r.attrs["slurm_restart_count"]) for r in runs], [0, 1])


if __name__ == "__main__":
    if not cluster_up():
        print("no SLURM cluster answers (scripts/slurm-local.sh start); skipping")
        sys.exit(77)
    harness.main()
