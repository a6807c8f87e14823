"""The command line of ndif-sweep and ndif-local: plan, status, export, verify, tokenize, help and
version, the server's start-up contract, and API-key handling (401 -> exit 5, the key never shown)."""

import json
import math
import os
import subprocess
import time
import urllib.request

import h5py
import numpy as np

import harness
from harness import TempDirTestCase, make_job, sweep, Expectation, check_file

HIDDEN = 32
USEFUL_LAYERS = 4 + 2 + 1  # DEFAULT_PROBES: "0:4", [1, 3], [2]


def lines_24():
    lines = harness.varied_prompts(21, seed=31) + [harness.long_text(150, seed=32), "Hi", "Hello world"]
    return [l if l.strip() else "x" for l in lines]


class Plan(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self, "ndif-sweep")

    def plan(self, sort_by_length):
        lines = lines_24()
        job_path, job = make_job(self.dir, lines, batch={"target_mb": 32, "max_prompts": 4, "max_tokens": 32768,
                                                         "sort_by_length": sort_by_length})
        result = sweep("plan", job_path, "--json", timeout=60)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertFalse((self.dir / "out.h5").exists(), "plan must write nothing")
        return json.loads(result.stdout), [len(t) for t in Expectation(job, lines).tokens]

    def check(self, plan, lengths, chunk_order):
        for key in ("prompts", "tokens", "padded_tokens", "batches", "max_batch_bytes", "download_bytes",
                    "file_bytes", "jobs"):
            self.assertIsInstance(plan.get(key), int, key)
        self.assertEqual(plan["prompts"], 24)
        self.assertEqual(plan["tokens"], sum(lengths))
        self.assertEqual(plan["batches"], 6)
        self.assertEqual(plan["jobs"], 6)
        chunks = [chunk_order[i:i + 4] for i in range(0, 24, 4)]
        self.assertEqual(plan["padded_tokens"], sum(4 * max(c) for c in chunks))
        row_bytes = USEFUL_LAYERS * 2 * HIDDEN * 2  # layers x positions x hidden x float16
        self.assertGreaterEqual(plan["max_batch_bytes"], 4 * row_bytes)
        self.assertGreaterEqual(plan["download_bytes"], 24 * row_bytes)
        self.assertGreaterEqual(plan["file_bytes"], 24 * row_bytes)

    def test_plan_json_with_length_sort(self):
        plan, lengths = self.plan(True)
        self.check(plan, lengths, sorted(lengths))

    def test_plan_json_in_file_order(self):
        plan, lengths = self.plan(False)
        self.check(plan, lengths, lengths)
        sorted_plan, _ = Plan.plan(self, True)
        self.assertLess(sorted_plan["padded_tokens"], plan["padded_tokens"])

    def test_plan_text_output(self):
        job_path, _ = make_job(self.dir, lines_24())
        result = sweep("plan", job_path, timeout=60)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("24", result.stdout)


class StatusExportVerify(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self)

    def complete_file(self, dtype="float16", max_prompts=2):
        self.lines = lines_24()
        self.job_path, self.job = make_job(self.dir, self.lines, dtype=dtype,
                                           batch={"target_mb": 32, "max_prompts": max_prompts,
                                                  "max_tokens": 32768, "sort_by_length": True})
        self.expect = Expectation(self.job, self.lines)
        result = sweep("run", self.job_path, ranks=2, timeout=240)
        self.assertEqual(result.returncode, 0, result.describe())
        check_file(self, self.dir / "out.h5", self.expect)
        return self.dir / "out.h5"

    def status(self, path):
        result = sweep("status", path, "--json", timeout=60)
        self.assertEqual(result.returncode, 0, result.describe())
        return json.loads(result.stdout)

    def unflag(self, path, batches):
        """Clear some completion flags: the file then looks like an interrupted run's."""
        with h5py.File(path, "r+") as f:
            done = f["batches/done"][()]
            done[batches] = 0
            f["batches/done"][...] = done
            counts = f["batches/count"][()]
        return int(sum(counts[b] for b in batches))

    def test_status_json_of_a_complete_file(self):
        path = self.complete_file()
        status = self.status(path)
        self.assertEqual(status["format"], "ndif-sweep/1")
        self.assertEqual(status["model"], self.job["model"])
        self.assertEqual(status["batches"], {"done": 12, "total": 12})
        self.assertEqual(status["rows"], {"done": 24, "total": 24})
        self.assertEqual(status["missing_batches"], [])
        self.assertEqual([p["name"] for p in status["probes"]], ["resid", "mlp", "attn"])
        self.assertEqual([p["module"] for p in status["probes"]], [p["module"] for p in harness.DEFAULT_PROBES])
        self.assertEqual([p["layers"] for p in status["probes"]], [[0, 1, 2, 3], [1, 3], [2]])
        self.assertEqual({p["dtype"] for p in status["probes"]}, {"float16"})
        self.assertEqual(len(status["runs"]), 1)
        text = sweep("status", path, timeout=60)
        self.assertEqual(text.returncode, 0, text.describe())
        self.assertIn("12", text.stdout)

    def test_status_json_of_a_partial_file_and_resume(self):
        path = self.complete_file()
        missing_rows = self.unflag(path, [1, 2, 7])
        status = self.status(path)
        self.assertEqual(status["batches"], {"done": 9, "total": 12})
        self.assertEqual(status["rows"], {"done": 24 - missing_rows, "total": 24})
        self.assertEqual(status["missing_batches"], [[1, 2], [7, 7]])
        result = sweep("run", self.job_path, timeout=240)
        self.assertEqual(result.returncode, 0, result.describe())
        check_file(self, path, self.expect)
        self.assertEqual(self.status(path)["missing_batches"], [])

    def test_export_npy_of_a_partial_file(self):
        path = self.complete_file()
        self.unflag(path, [0, 5])
        out = self.dir / "export"
        result = sweep("export", path, "--to", out, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        with h5py.File(path, "r") as f:
            valid = np.flatnonzero(f["batches/done"][()][f["prompts/batch"][()]] == 1)
            rows = np.load(out / "rows.npy")
            self.assertEqual(rows.dtype, np.int64)
            np.testing.assert_array_equal(rows, valid)
            self.assertLess(len(rows), 24)
            for probe in harness.DEFAULT_PROBES:
                stored = f["acts"][probe["name"]][()]
                for index, layer in enumerate(harness.layer_list(probe["layers"])):
                    array = np.load(out / f"{probe['name']}_layer{layer}.npy")
                    self.assertEqual(array.shape, (len(rows), 2, HIDDEN))
                    np.testing.assert_array_equal(harness.bit_view(array), harness.bit_view(stored[rows, index]))
        meta = json.loads((out / "meta.json").read_text())
        self.assertIsInstance(meta, dict)

    def test_export_npz_of_a_bfloat16_file(self):
        path = self.complete_file(dtype="bfloat16")
        out = self.dir / "export"
        result = sweep("export", path, "--to", out, "--format", "npz", timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        np.testing.assert_array_equal(np.load(out / "rows.npy"), np.arange(24))
        with h5py.File(path, "r") as f:
            for probe in harness.DEFAULT_PROBES:
                layers = harness.layer_list(probe["layers"])
                with np.load(out / f"{probe['name']}.npz") as archive:
                    self.assertEqual(sorted(archive.files), sorted(f"layer{l}" for l in layers))
                    for index, layer in enumerate(layers):
                        array = archive[f"layer{layer}"]
                        self.assertEqual(array.shape, (24, 2, HIDDEN))
                        np.testing.assert_array_equal(harness.bit_view(array),
                                                      harness.bit_view(f["acts"][probe["name"]][:, index]))
        self.assertTrue((out / "meta.json").exists())

    def test_verify_accepts_a_good_file_and_catches_flipped_bytes(self):
        path = self.complete_file()
        result = sweep("verify", path, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        with h5py.File(path, "r+") as f:
            order, start = f["batches/order"][()], f["batches/start"][()]
            row = int(order[start[3]])
            ds = f["acts/mlp"]
            value = ds[row, 1, 0, 5:6].copy()
            ds[row, 1, 0, 5:6] = (value.view(np.uint16) ^ np.uint16(0x0100)).view(np.float16)
        result = sweep("verify", path, timeout=120)
        self.assertNotEqual(result.returncode, 0, result.describe())


class Tokenize(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self, "ndif-sweep")
        self.texts = harness.varied_prompts(300, seed=41) + [
            "", " ", "a", "\n\n", "\t tab", "<|begin_of_text|>Hello<|end_of_text|>", "😀👍🏽👨‍👩‍👧",
            "مرحبا بالعالم", "Ελληνικά", "e\u0301\u0301", "1234567890123456789", "https://x.org/?q=a&b=c",
            harness.long_text(400, seed=42)]

    def tokenize(self, name, *flags):
        stdin = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in self.texts)
        result = sweep("tokenize", harness.tokenizer_file(name), *flags, input_text=stdin, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        lines = result.stdout.splitlines()
        self.assertEqual(len(lines), len(self.texts))
        return [json.loads(l) for l in lines]

    def test_ids_equal_the_reference(self):
        for name in ("llama3_1", "gpt2"):
            for special in (False, True):
                with self.subTest(tokenizer=name, special=special):
                    flags = ("--special",) if special else ()
                    got = self.tokenize(name, *flags)
                    want = harness.reference_ids(name, self.texts, special=special)
                    for text, g, w in zip(self.texts, got, want):
                        self.assertEqual(g, w, f"text {text!r}")

    def test_offsets_equal_the_reference(self):
        got = self.tokenize("llama3_1", "--offsets")
        want = harness.reference_ids("llama3_1", self.texts, special=False, offsets=True)
        for text, g, w in zip(self.texts, got, want):
            self.assertEqual(g, w, f"text {text!r}")


class ExampleJobs(TempDirTestCase):
    def test_every_job_under_jobs_plans_without_error(self):
        harness.require_binaries(self, "ndif-sweep")
        jobs = sorted((harness.SOURCE / "jobs").glob("*.json"))
        self.assertGreaterEqual(len(jobs), 2)
        for job in jobs:
            with self.subTest(job=job.name):
                result = sweep("plan", job, "--json", timeout=120)
                self.assertEqual(result.returncode, 0, result.describe())
                self.assertGreater(json.loads(result.stdout)["batches"], 0)


class CheckLocal(TempDirTestCase):
    def test_check_of_a_local_job_starts_the_bundled_server_and_probes_it(self):
        harness.require_binaries(self)
        job_path, _ = make_job(self.dir, lines_24())
        result = sweep("check", job_path, "--probe", "--json", timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        report = json.loads(result.stdout)
        self.assertTrue(report["ok"])
        statuses = {c["name"]: c["status"] for c in report["checks"]}
        self.assertEqual(statuses, {"job file": "ok", "endpoint": "ok", "prompts": "ok", "encoder": "ok",
                                    "encode": "ok", "probe": "ok"})
        probe = [c for c in report["checks"] if c["name"] == "probe"][0]["detail"]
        self.assertIn("(1, 7, 2, 32) float16", probe)
        self.assertFalse((self.dir / "out.h5").exists(), "check wrote the output file")

    def test_check_of_a_broken_job_fails_at_the_job_file_with_exit_2(self):
        harness.require_binaries(self, "ndif-sweep")
        job_path, job = make_job(self.dir, lines_24())
        job["dtype"] = "float8"
        job_path.write_text(json.dumps(job))
        result = sweep("check", job_path, timeout=60)
        self.assertEqual(result.returncode, 2, result.describe())
        self.assertIn("FAIL  job file", result.stdout)
        self.assertIn("\"dtype\"", result.stdout)


class HelpAndVersion(TempDirTestCase):
    def test_help_lists_every_command(self):
        harness.require_binaries(self, "ndif-sweep")
        result = sweep("--help", timeout=30)
        self.assertEqual(result.returncode, 0, result.describe())
        for command in ("run", "plan", "check", "status", "export", "verify", "tokenize"):
            self.assertIn(command, result.stdout)

    def test_version(self):
        harness.require_binaries(self, "ndif-sweep")
        result = sweep("--version", timeout=30)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertRegex(result.stdout, r"ndif-sweep \d+\.\d+\.\d+")

    def test_usage_error_is_exit_2(self):
        harness.require_binaries(self, "ndif-sweep")
        self.assertEqual(sweep("frobnicate", timeout=30).returncode, 2)
        self.assertEqual(sweep("run", timeout=30).returncode, 2)


class LocalServerAndKeys(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self, "ndif-local")

    def get(self, url, key="any-key"):
        request = urllib.request.Request(url, headers={"ndif-api-key": key})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8")

    def test_listening_line_port_file_ping_and_status(self):
        server = self.start_server("--layers", "6", "--hidden", "48")
        port = int(server.port_file.read_text().strip())
        self.assertIn(f"listening on http://127.0.0.1:{port}", server.stdout_text)
        self.assertEqual(self.get(server.url + "/ping"), (200, '"pong"'))
        status, body = self.get(server.url + "/status")
        self.assertEqual(status, 200)
        deployments = json.loads(body)["deployments"]
        self.assertEqual([d["config"] for d in deployments.values()], [{"hidden_size": 48, "num_hidden_layers": 6}])

    def test_wrong_key_is_exit_5_and_no_key_is_ever_shown(self):
        harness.require_binaries(self, "ndif-sweep")
        right, wrong = "right-secret-4f1d9a", "wrong-secret-77c0b2"
        server = self.start_server("--layers", "4", "--hidden", "32", "--api-key", right)
        lines = lines_24()
        job_path, _ = make_job(self.dir, lines, api_key_env="MY_NDIF_KEY")
        env = harness.base_env(MY_NDIF_KEY=wrong)
        result = sweep("run", job_path, "--endpoint", server.url, timeout=120, env=env)
        self.assertEqual(result.returncode, 5, result.describe())
        for key in (right, wrong):
            self.assertNotIn(key, result.stdout + result.stderr)
        if (self.dir / "out.h5").exists():
            self.assertNotIn(wrong.encode(), (self.dir / "out.h5").read_bytes())

        (self.dir / "out.h5").unlink(missing_ok=True)
        result = sweep("run", job_path, "--endpoint", server.url, ranks=2, timeout=240,
                       env=harness.base_env(MY_NDIF_KEY=right))
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertNotIn(right, result.stdout + result.stderr)
        self.assertNotIn(right.encode(), (self.dir / "out.h5").read_bytes())
        check_file(self, self.dir / "out.h5", Expectation(json.loads(job_path.read_text()), lines))

    def test_key_not_in_any_process_arguments(self):
        harness.require_binaries(self, "ndif-sweep")
        secret = "argv-secret-91be3c"
        lines = harness.varied_prompts(80, seed=51)
        lines = [l if l.strip() else "x" for l in lines]
        job_path, _ = make_job(self.dir, lines, batch={"target_mb": 32, "max_prompts": 1, "max_tokens": 32768,
                                                       "sort_by_length": True}, max_inflight=1)
        proc = self.own_process(subprocess.Popen(
            harness.sweep_cmd("run", job_path, "--progress", "none"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=harness.base_env(NDIF_API_KEY=secret), start_new_session=True))
        seen = set()
        while proc.poll() is None:
            for pid in [proc.pid] + harness.descendants(proc.pid):
                cmdline = harness.proc_read(pid, "cmdline")
                if cmdline:
                    seen.add(os.path.basename(cmdline.split(b"\0")[0].decode()))
                    self.assertNotIn(secret.encode(), cmdline, f"pid {pid}: {cmdline!r}")
            time.sleep(0.01)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err.decode())
        self.assertIn("ndif-sweep", seen)
        self.assertIn("ndif-local", seen, "the bundled server was never seen running")
        self.assertNotIn(secret.encode(), out + err)
        self.assertNotIn(secret.encode(), (self.dir / "out.h5").read_bytes())


if __name__ == "__main__":
    harness.main()
