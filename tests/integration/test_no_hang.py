"""No rank hangs: a failure on any rank in any phase of a run (start, run, finalize, recording the
outcome), injected through the test hook NDIF_SWEEP_TEST_FAIL=phase:rank, ends every rank within
seconds with exit code 1 (an unexpected fault), leaves no rank process behind and leaves a file
whose flagged batches are exact, which a plain rerun completes."""

import subprocess
import time

import harness
from harness import TempDirTestCase, make_job, sweep, sweep_cmd, Expectation, check_file

# Enough for a run that works here to finish several times over; a hang shows as a timeout.
SECONDS_ALLOWED = 40


class NoHang(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self)
        self.lines = harness.varied_prompts(24, seed=41)
        self.job_path, self.job = make_job(self.dir, self.lines,
                                           batch={"target_mb": 32, "max_prompts": 2, "max_tokens": 32768,
                                                  "sort_by_length": True})
        self.expect = Expectation(self.job, self.lines)
        self.server = self.start_server("--layers", "4", "--hidden", "32", "--latency-ms", 150, "--workers", 4)

    def run_failing(self, phase, rank, ranks):
        command = sweep_cmd("run", self.job_path, "--endpoint", self.server.url, "--progress", "lines",
                            ranks=ranks)
        if ranks is not None:
            command[1:1] = ["-x", "NDIF_SWEEP_TEST_FAIL"]
        env = harness.base_env(NDIF_SWEEP_TEST_FAIL=f"{phase}:{rank}")
        started = time.monotonic()
        proc = self.own_process(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True))
        try:
            out, _ = proc.communicate(timeout=SECONDS_ALLOWED)
        except subprocess.TimeoutExpired:
            harness.kill_group(proc)
            out, _ = proc.communicate()
            self.fail(f"{phase}:{rank} on {ranks} ranks did not end within {SECONDS_ALLOWED} s:\n"
                      + out.decode("utf-8", "replace")[-3000:])
        elapsed = time.monotonic() - started
        print(f"  {phase}:{rank} on {ranks or 1} rank(s): exit {proc.returncode} after {elapsed:.1f} s", flush=True)
        text = out.decode("utf-8", "replace")
        self.assertIn(f"injected test failure (NDIF_SWEEP_TEST_FAIL={phase}:{rank})", text)
        left = [p for p in harness.descendants(proc.pid) if harness.proc_read(p, "comm").strip() == b"ndif-sweep"]
        self.assertEqual(left, [], "rank processes left behind")
        return proc.returncode, text, elapsed

    def rerun_completes(self):
        result = sweep("run", self.job_path, "--endpoint", self.server.url, ranks=2, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        check_file(self, self.dir / "out.h5", self.expect)

    def test_a_failure_at_start_on_any_rank_ends_every_rank_before_anything_is_written(self):
        for ranks, rank in ((None, 0), (2, 0), (2, 1), (3, 2)):
            with self.subTest(ranks=ranks, rank=rank):
                code, text, _ = self.run_failing("start", rank, ranks)
                self.assertEqual(code, 1, text)
                self.assertFalse((self.dir / "out.h5").exists(), text)
                self.assertFalse((self.dir / "out.h5.lock").exists() and (self.dir / "out.h5").exists())
        self.rerun_completes()

    def test_a_failure_while_running_or_closing_on_any_rank_ends_every_rank_and_the_file_resumes(self):
        for phase in ("run", "finalize"):
            for ranks, rank in ((None, 0), (2, 0), (2, 1), (4, 3)):
                with self.subTest(phase=phase, ranks=ranks, rank=rank):
                    code, text, _ = self.run_failing(phase, rank, ranks)
                    self.assertEqual(code, 1, text)
                    self.assertIn("stopping every rank (finished batches are kept", text)
                    rows, _ = check_file(self, self.dir / "out.h5", self.expect, require_complete=False)
                    status = harness.status_json(self.dir / "out.h5")
                    self.assertEqual(status["runs"][-1]["outcome"], "running")  # never recorded
                    if phase == "finalize":
                        self.assertEqual(status["batches"]["done"], status["batches"]["total"])
                    self.rerun_completes()
                    (self.dir / "out.h5").unlink()

    def test_a_failure_while_recording_the_outcome_ends_every_rank(self):
        # Rank 0 fails: it ends them all; the data is complete, only the outcome is missing.
        code, text, _ = self.run_failing("outcome", 0, 2)
        self.assertEqual(code, 1, text)
        check_file(self, self.dir / "out.h5", self.expect)
        self.assertEqual(harness.status_json(self.dir / "out.h5")["runs"][-1]["outcome"], "running")
        # Another rank fails after the file is closed: it ends alone, rank 0 records the outcome.
        (self.dir / "out.h5").unlink()
        code, text, _ = self.run_failing("outcome", 1, 2)
        self.assertEqual(code, 1, text)
        check_file(self, self.dir / "out.h5", self.expect)
        self.assertEqual(harness.status_json(self.dir / "out.h5")["runs"][-1]["outcome"], "complete")
        self.rerun_completes()


if __name__ == "__main__":
    harness.main()


class BundledServer(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self)

    def test_a_sweep_killed_with_sigkill_leaves_no_bundled_server_behind(self):
        # Enough batches that the run is still going when it is killed.
        lines = harness.varied_prompts(400, seed=43)
        job_path, _ = make_job(self.dir, lines, batch={"target_mb": 32, "max_prompts": 1, "max_tokens": 32768,
                                                       "sort_by_length": True})
        proc = self.own_process(subprocess.Popen(sweep_cmd("run", job_path, "--progress", "none"),
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                 stdin=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + 30
        servers = []
        while not servers:
            self.assertLess(time.monotonic(), deadline, "the run started no ndif-local")
            self.assertIsNone(proc.poll(), "the run ended before it could be killed")
            servers = [p for p in harness.descendants(proc.pid)
                       if harness.proc_read(p, "comm").strip() == b"ndif-local"]
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(harness.proc_read(p, "comm").strip() == b"ndif-local" for p in servers):
            self.assertLess(time.monotonic(), deadline, f"ndif-local {servers} still runs after its sweep died")
            time.sleep(0.05)
