"""Network and server faults injected by ndif-local (--fail-rate/--fail-kinds/--fail-seed): transient
ones are retried with backoff and the file ends up exact; faults that exhaust a batch's attempts
leave its rows unflagged, the run exits 3, every flagged batch is exact, and a second run completes
the file."""

import h5py
import numpy as np

import harness
from harness import Expectation, check_file, make_job, sweep

TRANSIENT = "http500,http503,reset,truncate,error_status,expired_url,slow"


class Faults(harness.TempDirTestCase):
    def job(self, **fields):
        lines = harness.varied_prompts(48, seed=21)
        fields.setdefault("retry", {"max_attempts": 10, "initial_backoff_s": 0.05, "max_backoff_s": 0.2})
        job_path, job = make_job(self.dir, lines, batch={"target_mb": 0.003}, **fields)
        return job_path, job, lines

    def test_transient_faults_are_retried_and_every_value_is_exact(self):
        server = self.start_server("--layers", "4", "--hidden", "32", "--workers", "2", "--fail-rate", "0.5",
                                   "--fail-kinds", TRANSIENT, "--fail-seed", "5")
        job_path, job, lines = self.job()
        result = sweep("run", job_path, "--endpoint", server.url, "--progress", "lines", ranks=2, timeout=300)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("retrying in", result.stderr)
        rows, _ = check_file(self, self.dir / "out.h5", Expectation(job, lines))
        self.assertEqual(rows, len(lines))
        with h5py.File(self.dir / "out.h5", "r") as f:
            attempts = f["batches/attempts"][()]
            self.assertTrue(np.all(attempts >= 1))
            self.assertGreater(int(attempts.max()), 1, "the faults should have cost some batches a retry")
        verify = sweep("verify", self.dir / "out.h5")
        self.assertEqual(verify.returncode, 0, verify.describe())

    def test_batches_that_exhaust_their_attempts_leave_a_resumable_file(self):
        # A damaged zstd frame arrives complete: retrying the same bytes cannot help, so the batch
        # fails at once; the other batches are written, and the run exits 3 (resumable).
        faulty = self.start_server("--layers", "4", "--hidden", "32", "--fail-rate", "0.4",
                                   "--fail-kinds", "bad_zstd", "--fail-seed", "2")
        job_path, job, lines = self.job(retry={"max_attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.1})
        first = sweep("run", job_path, "--endpoint", faulty.url, "--progress", "lines", timeout=300)
        self.assertEqual(first.returncode, 3, first.describe())
        self.assertIn("failed after all attempts", first.stderr)
        partial = harness.status_json(self.dir / "out.h5")
        self.assertTrue(partial["missing_batches"], partial)
        self.assertGreater(partial["batches"]["done"], 0, partial)
        check_file(self, self.dir / "out.h5", Expectation(job, lines), require_complete=False)

        healthy = self.start_server("--layers", "4", "--hidden", "32")
        second = sweep("run", job_path, "--endpoint", healthy.url, "--progress", "lines", ranks=2, timeout=300)
        self.assertEqual(second.returncode, 0, second.describe())
        self.assertIn("already done", second.stderr)
        rows, _ = check_file(self, self.dir / "out.h5", Expectation(job, lines))
        self.assertEqual(rows, len(lines))


if __name__ == "__main__":
    harness.main()
