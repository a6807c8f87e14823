"""A write that fails on one rank (here: the file system fills up) must end every rank, not leave
the others waiting in the collective close; the batches flagged before the failure stay exact, and
the file resumes elsewhere. Needs root to mount a small tmpfs; skipped otherwise."""

import os
import shutil
import subprocess
import unittest

import harness
from harness import Expectation, check_file, make_job, sweep


class StorageFailure(harness.TempDirTestCase):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0 or not shutil.which("mount"):
            self.skipTest("needs root to mount a small tmpfs")
        self.small = self.dir / "small"
        self.small.mkdir()
        # Room for the file's metadata and the first batches, not for all of them.
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(self.small)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: " + mounted.stderr)
        self.addCleanup(subprocess.run, ["umount", "-l", str(self.small)], capture_output=True)

    def test_full_disk_on_one_rank_ends_every_rank_and_the_file_resumes(self):
        lines = harness.varied_prompts(200, seed=31)
        job_path, job = make_job(self.dir, lines, batch={"target_mb": 0.05},
                                 local={"layers": 8, "hidden": 32, "seed": 0, "model_dtype": "bfloat16"},
                                 probes=[{"name": "resid", "module": "model.layers.{layer}", "output_index": 0,
                                          "layers": "0:8"}])
        full = self.small / "out.h5"
        failed = sweep("run", job_path, "--output", full, "--progress", "lines", ranks=2, timeout=120)
        self.assertNotIn(failed.returncode, (0, 3), failed.describe())
        self.assertIn("stopping every rank", failed.stderr)
        status = harness.status_json(full)
        self.assertIsNotNone(status, "the file must stay readable after the failure")
        self.assertLess(status["batches"]["done"], status["batches"]["total"])
        check_file(self, full, Expectation(job, lines), require_complete=False)

        moved = self.dir / "moved.h5"
        shutil.copyfile(full, moved)
        resumed = sweep("run", job_path, "--output", moved, "--progress", "lines", ranks=2, timeout=180)
        self.assertEqual(resumed.returncode, 0, resumed.describe())
        rows, _ = check_file(self, moved, Expectation(job, lines))
        self.assertEqual(rows, len(lines))


if __name__ == "__main__":
    harness.main()
