"""The journal of jobs in flight: a run killed (one rank with SIGKILL, or mpirun itself) or drained
(SIGUSR1, SIGTERM) while its NDIF jobs wait in a long queue leaves their ids in /journal/jobs; the
restart, with another rank count, polls those jobs instead of sending them again. The server's own
counts (GET /stats) prove that no batch was submitted twice, and every stored number is exact."""

import json
import os
import signal
import subprocess
import time
import urllib.request

import harness
from harness import TempDirTestCase, make_job, sweep, sweep_cmd, Expectation, check_file

RANKS = 2
INFLIGHT = 4
BATCHES = RANKS * INFLIGHT  # every batch of the job is in flight at once
QUEUE_MS = 6000


def stats(server):
    with urllib.request.urlopen(server.url + "/stats", timeout=10) as reply:
        return json.loads(reply.read())


class Journal(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self)
        self.lines = harness.varied_prompts(2 * BATCHES, seed=31)
        self.job_path, self.job = make_job(self.dir, self.lines,
                                           batch={"target_mb": 32, "max_prompts": 2, "max_tokens": 32768,
                                                  "sort_by_length": True})
        self.expect = Expectation(self.job, self.lines)
        self.server = self.start_server("--layers", "4", "--hidden", "32", "--latency-ms", QUEUE_MS,
                                        "--workers", BATCHES)

    def start_run(self, ranks=RANKS):
        self.log = open(self.dir / "first.log", "wb")
        self.addCleanup(self.log.close)
        proc = subprocess.Popen(sweep_cmd("run", self.job_path, "--endpoint", self.server.url, "--max-inflight",
                                          INFLIGHT, "--progress", "lines", ranks=ranks),
                                stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=harness.base_env(), start_new_session=True)
        return self.own_process(proc)

    def log_text(self):
        return (self.dir / "first.log").read_text("utf-8", "replace")[-4000:]

    def wait_all_journaled(self, proc, timeout=60):
        """Until every batch's job is in the journal and none is done (all wait in the queue)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assertIsNone(proc.poll(), "the run ended early: " + self.log_text())
            status = harness.status_json(self.dir / "out.h5")
            if status and len(status["journal"]) == BATCHES:
                self.assertEqual(status["batches"]["done"], 0)
                self.assertEqual(status["batches"]["total"], BATCHES)
                self.assertEqual(stats(self.server)["submitted"], BATCHES)
                return status
            time.sleep(0.1)
        self.fail("the journal never held every batch: " + self.log_text())

    def wait_exit(self, proc, timeout=60):
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail("the interrupted run did not end: " + self.log_text())

    def wait_ranks_gone(self, pids, timeout=30):
        deadline = time.monotonic() + timeout
        while any(harness.proc_read(p, "comm").strip() == b"ndif-sweep" for p in pids):
            self.assertLess(time.monotonic(), deadline, f"ranks {pids} still running")
            time.sleep(0.1)

    def restart_and_check(self, ranks, journaled_batches):
        started = time.monotonic()
        result = sweep("run", self.job_path, "--endpoint", self.server.url, "--max-inflight", INFLIGHT,
                       "--progress", "lines", ranks=ranks, timeout=180)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn(f"{journaled_batches} NDIF job(s) of an earlier run are in the journal", result.stderr)
        check_file(self, self.dir / "out.h5", self.expect)
        counts = stats(self.server)
        # No batch was sent twice: the restart only polled and downloaded.
        self.assertEqual(counts["submitted"], BATCHES, counts)
        self.assertEqual(counts["downloaded"], BATCHES, counts)
        status = harness.status_json(self.dir / "out.h5")
        self.assertEqual(status["journal"], [])  # every batch is done: nothing left to poll
        self.assertEqual([r["outcome"] for r in status["runs"]][-1], "complete")
        return time.monotonic() - started

    def test_sigkill_of_a_rank_while_every_job_is_queued_then_restart_on_three_ranks_sends_nothing_again(self):
        proc = self.start_run()
        self.wait_all_journaled(proc)
        pids = harness.mpi_rank_pids(proc.pid)
        self.assertEqual(sorted(pids), [0, 1])
        os.kill(pids[1], signal.SIGKILL)
        self.assertNotEqual(self.wait_exit(proc), 0)
        self.wait_ranks_gone(list(pids.values()))
        # The jobs finish on the server meanwhile; their results wait there to be fetched.
        deadline = time.monotonic() + QUEUE_MS / 1000 + 30
        while stats(self.server)["completed"] < BATCHES:
            self.assertLess(time.monotonic(), deadline, stats(self.server))
            time.sleep(0.2)
        self.restart_and_check(3, BATCHES)

    def test_sigkill_of_mpirun_then_an_immediate_restart_awaits_the_queued_jobs(self):
        proc = self.start_run()
        self.wait_all_journaled(proc)
        pids = harness.mpi_rank_pids(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        self.wait_exit(proc)
        self.wait_ranks_gone(list(pids.values()))
        self.assertLess(stats(self.server)["completed"], BATCHES)  # still queued: the restart waits
        self.restart_and_check(1, BATCHES)

    def test_sigterm_drain_keeps_the_journal_and_the_requeued_run_polls_it(self):
        proc = self.start_run()
        self.wait_all_journaled(proc)
        # As SLURM does at a time limit or a requeue: every task gets SIGTERM and abandons its jobs.
        for pid in harness.mpi_rank_pids(proc.pid).values():
            os.kill(pid, signal.SIGTERM)
        self.assertEqual(self.wait_exit(proc), 3, self.log_text())
        self.assertIn("draining every rank (abandoning the jobs in flight; the journal keeps them)", self.log_text())
        status = harness.status_json(self.dir / "out.h5")
        self.assertEqual(len(status["journal"]), BATCHES)
        self.assertEqual(status["runs"][-1]["outcome"], "drained")
        text = sweep("status", self.dir / "out.h5").stdout
        self.assertIn(f"journal: {BATCHES} NDIF job(s) of missing batches that a restart polls first", text)
        self.restart_and_check(2, BATCHES)

    def test_sigusr1_drain_lets_the_jobs_in_flight_finish_and_the_restart_sends_the_rest_once(self):
        # More batches than slots: some are never sent before the drain.
        self.lines = harness.varied_prompts(4 * BATCHES, seed=32)
        self.job_path, self.job = make_job(self.dir, self.lines,
                                           batch={"target_mb": 32, "max_prompts": 2, "max_tokens": 32768,
                                                  "sort_by_length": True})
        self.expect = Expectation(self.job, self.lines)
        proc = self.start_run()
        deadline = time.monotonic() + 60
        while stats(self.server)["submitted"] < BATCHES:
            self.assertLess(time.monotonic(), deadline, self.log_text())
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        self.assertEqual(self.wait_exit(proc, timeout=QUEUE_MS / 1000 + 60), 3, self.log_text())
        status = harness.status_json(self.dir / "out.h5")
        self.assertEqual(status["batches"]["done"], BATCHES)  # the jobs in flight finished
        self.assertEqual(status["journal"], [])
        result = sweep("run", self.job_path, "--endpoint", self.server.url, "--max-inflight", INFLIGHT,
                       ranks=3, timeout=180)
        self.assertEqual(result.returncode, 0, result.describe())
        check_file(self, self.dir / "out.h5", self.expect)
        self.assertEqual(stats(self.server)["submitted"], 2 * BATCHES)


if __name__ == "__main__":
    harness.main()
