"""Crash and drain: a run killed (SIGKILL of one rank) or drained (SIGTERM to mpirun) in the middle
leaves a file that opens and whose flagged batches are exact; a restart with another rank count
finishes it, and the result equals an uninterrupted run's file. A prompts file changed in place during
a run stops it (exit 2) before a changed line is sent, and the run resumes once the file is restored."""

import json
import os
import signal
import subprocess
import time

import numpy as np

import harness
from harness import TempDirTestCase, make_job, sweep, sweep_cmd, Expectation, check_file, snapshot

# Per-batch timing and retry counts and the /runs records describe how a file was made, not
# what it holds, and the journal names the NDIF jobs that made it: they legitimately differ between
# an interrupted and an uninterrupted run.
VOLATILE = ("batches/seconds", "batches/attempts", "runs", "journal")

LATENCY_MS = 400


def prompt_lines():
    lines = harness.varied_prompts(56, seed=21) + [harness.long_text(200, seed=22), "Hi", "Hello world", "x y"]
    return [l for l in lines if l.strip()]


class Resume(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self)
        # Two prompts per batch: about 30 batches, each held LATENCY_MS in the server's queue.
        self.lines = prompt_lines()
        self.job_path, self.job = make_job(self.dir, self.lines, dtype="bfloat16",
                                           batch={"target_mb": 32, "max_prompts": 2, "max_tokens": 32768,
                                                  "sort_by_length": True})
        self.expect = Expectation(self.job, self.lines)
        self.slow = self.start_server("--layers", "4", "--hidden", "32", "--latency-ms", LATENCY_MS,
                                      "--workers", "2")

    def reference_file(self):
        """The same job, uninterrupted, on a server without latency."""
        fast = self.start_server("--layers", "4", "--hidden", "32")
        result = sweep("run", self.job_path, "--endpoint", fast.url, "--output", self.dir / "reference.h5",
                       ranks=2, timeout=240)
        self.assertEqual(result.returncode, 0, result.describe())
        check_file(self, self.dir / "reference.h5", self.expect)
        return self.dir / "reference.h5"

    def start_slow_run(self, ranks=2):
        log = open(self.dir / "interrupted.log", "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(sweep_cmd("run", self.job_path, "--endpoint", self.slow.url, "--max-inflight", 1,
                                          "--progress", "lines", ranks=ranks),
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=harness.base_env(), start_new_session=True)
        return self.own_process(proc)

    def wait_partly_done(self, proc, timeout=120):
        """Poll `status --json` until some but not all batches are flagged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assertIsNone(proc.poll(), "the run ended before it could be interrupted: " + self.log_text())
            status = harness.status_json(self.dir / "out.h5")
            if status and 0 < status["batches"]["done"] < status["batches"]["total"] - 3:
                return status
            time.sleep(0.1)
        self.fail("no partial progress seen: " + self.log_text())

    def log_text(self):
        return (self.dir / "interrupted.log").read_text("utf-8", "replace")[-4000:]

    def wait_exit(self, proc, timeout=90):
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail(f"mpirun did not exit within {timeout} s after the interruption: " + self.log_text())

    def wait_gone(self, pids, timeout=30):
        deadline = time.monotonic() + timeout
        while any(os.path.exists(f"/proc/{p}") and harness.proc_read(p, "comm").strip() == b"ndif-sweep"
                  for p in pids):
            self.assertLess(time.monotonic(), deadline, f"ranks {pids} still running")
            time.sleep(0.1)

    def check_partial(self):
        """The interrupted file opens, some batches are missing, every flagged batch is exact."""
        rows, _ = check_file(self, self.dir / "out.h5", self.expect, require_complete=False)
        self.assertGreater(rows, 0)
        self.assertLess(rows, len(self.lines))

    def resume_and_compare(self, ranks):
        result = sweep("run", self.job_path, "--endpoint", self.slow.url, "--max-inflight", 2, ranks=ranks,
                       timeout=300)
        self.assertEqual(result.returncode, 0, result.describe())
        check_file(self, self.dir / "out.h5", self.expect)
        reference = snapshot(self.reference_file(), VOLATILE)
        resumed = snapshot(self.dir / "out.h5", VOLATILE)
        self.assertEqual(sorted(resumed), sorted(reference))
        for name in reference:
            self.assertTrue(np.array_equal(resumed[name], reference[name]), f"/{name} differs")
        status = harness.status_json(self.dir / "out.h5")
        self.assertEqual(status["batches"]["done"], status["batches"]["total"])
        self.assertGreaterEqual(len(status["runs"]), 2)

    def kill_rank(self, rank):
        proc = self.start_slow_run(ranks=2)
        self.wait_partly_done(proc)
        pids = harness.mpi_rank_pids(proc.pid)
        self.assertEqual(sorted(pids), [0, 1], f"rank processes of mpirun {proc.pid}: {pids}")
        os.kill(pids[rank], signal.SIGKILL)
        self.assertNotEqual(self.wait_exit(proc), 0)
        self.wait_gone(list(pids.values()))

    def test_sigkill_rank1_then_resume_on_three_ranks(self):
        self.kill_rank(1)
        self.check_partial()
        self.resume_and_compare(ranks=3)

    def test_sigkill_rank0_then_resume_on_one_process(self):
        self.kill_rank(0)
        self.check_partial()
        self.resume_and_compare(ranks=None)

    def drain(self, signal_ranks=None, signal_mpirun=None):
        proc = self.start_slow_run(ranks=2)
        self.wait_partly_done(proc)
        pids = harness.mpi_rank_pids(proc.pid)
        if signal_ranks:
            for pid in pids.values():
                os.kill(pid, signal_ranks)
        if signal_mpirun:
            proc.send_signal(signal_mpirun)
        code = self.wait_exit(proc)
        self.wait_gone(list(pids.values()))
        self.check_partial()
        status = harness.status_json(self.dir / "out.h5")
        self.assertTrue(status["missing_batches"], json.dumps(status))
        return code, status["runs"][-1]["outcome"]

    def test_sigterm_to_every_rank_drains_with_exit_3_then_resume_completes(self):
        # What SLURM does at a time limit or preemption: SIGTERM to every task of the step.
        self.assertEqual(self.drain(signal_ranks=signal.SIGTERM), (3, "drained"), self.log_text())
        self.resume_and_compare(ranks=2)

    def test_sigusr1_to_mpirun_finishes_batches_in_flight_with_exit_3(self):
        # mpirun forwards SIGUSR1 to the ranks; the early warning of `sbatch --signal=USR1@T`.
        self.assertEqual(self.drain(signal_mpirun=signal.SIGUSR1), (3, "drained"), self.log_text())
        self.resume_and_compare(ranks=1)

    def test_sigterm_to_mpirun_leaves_a_resumable_file(self):
        # mpirun forwards SIGTERM and then reports its own termination (exit 1, not the ranks' 3),
        # but the ranks still drain and close the file.
        code, _ = self.drain(signal_mpirun=signal.SIGTERM)
        self.assertNotEqual(code, 0, self.log_text())
        self.resume_and_compare(ranks=3)

    def test_a_prompts_file_changed_in_place_stops_the_run_with_exit_2_and_resumes_once_restored(self):
        # A run reads the prompts file again as it hands batches out; a line that is not the line it
        # planned must not be sent. One byte of every line is changed in place (the same inode).
        prompts = self.dir / "prompts.jsonl"
        original = prompts.read_bytes()
        proc = self.start_slow_run(ranks=2)
        self.wait_partly_done(proc)
        changed = bytearray(original)
        start = 0
        while start < len(changed):
            changed[start + 1] ^= 0x01  # the first byte of each prompt's text (or key)
            start = changed.index(b"\n", start) + 1
        with open(prompts, "r+b") as f:
            f.write(changed)
        self.assertEqual(self.wait_exit(proc), 2, self.log_text())
        self.assertIn("the line changed since the job read the prompts file", self.log_text())
        self.check_partial()
        prompts.write_bytes(original)
        self.resume_and_compare(ranks=1)


if __name__ == "__main__":
    harness.main()
