"""ndif-sweep against a real NDIF peer (tests/peer/ndif_peer.py: nnsight 0.8.1's own server path
on tiny seeded Llama- and GPT-2-style models, served in bfloat16), with requests built by real
nnsight in ndif-sweep's encoder process. Every stored value must equal what nnsight gives for the
same padded batch traced locally, bit for bit, and each prompt run alone through plain transformers
within a tolerance. Then the bad inputs and faults of production: no nnsight, another nnsight
version than the server's, a model that is not deployed, a wrong model key or API key, a probe the
model does not have, an encoder that crashes, hangs or writes garbage, results of the wrong
variable or dtype, transient server faults.

Runs with the project's test environment (.venv, scripts/setup-python.sh), never skipped."""

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np

import harness
import realmodel as rm
from harness import TempDirTestCase

# The largest difference allowed between a stored value and the same prompt run alone through
# plain transformers: batch shapes and masks take different kernel paths, so bfloat16 weights
# round differently. Measured here (bench/nnsight_deviation.py): at most 0.0015.
ALONE_TOLERANCE = 0.01


def prompt_lines(count=36, seed=5):
    lines = ["Hi", "The cat sat on the mat", harness.long_text(90, seed=seed),
             {"prompt": "The Eiffel Tower is in Paris", "positions": [{"span": "Tower"}, -1], "id": "eiffel"},
             {"prompt": "東京の天気は晴れです 🙂", "positions": [1, -1], "meta": {"kind": "cjk"}}]
    lines += harness.varied_prompts(count, seed=seed)
    return [l for l in lines if not isinstance(l, str) or l.strip()]


class PeerTestCase(TempDirTestCase):
    """One peer for the class; jobs aimed at it with the encoder on this very interpreter."""

    peer_args = ()

    @classmethod
    def setUpClass(cls):
        rm.build_models()
        cls.peer = rm.Peer(*cls.peer_args)

    @classmethod
    def tearDownClass(cls):
        cls.peer.stop()

    def setUp(self):
        super().setUp()
        harness.require_binaries(self, "ndif-sweep")

    def env(self, **extra):
        env = harness.base_env(**{"NDIF_API_KEY": rm.API_KEY, "HF_HUB_CACHE": str(rm.hf_cache()), **extra})
        env.pop("NDIF_SWEEP_PYTHON", None)
        return env

    def job(self, lines, model=rm.LLAMA, **fields):
        fields.setdefault("python", sys.executable)
        if "tokenizer" not in fields:
            fields["tokenizer"] = str(harness.tokenizer_file(rm.TOKENIZER[model]))
        if "probes" not in fields:
            fields["probes"] = rm.PROBES[model]
        job_path, job = harness.make_job(self.dir, lines, model=model, endpoint=self.peer.url, **fields)
        for key in ("encoder", "local"):
            job.pop(key)  # a remote endpoint: the nnsight encoder by default
        job_path.write_text(json.dumps(job, indent=2, ensure_ascii=False), encoding="utf-8")
        return job_path, job

    def run_sweep(self, job_path, *args, ranks=None, env=None, timeout=300):
        return harness.sweep("run", job_path, "--progress", "lines", *args, ranks=ranks,
                             env=env or self.env(), timeout=timeout)

    def check_exact(self, out, job, lines):
        """Every valid row of every probe equals the local nnsight trace of its batch, bit for bit;
        returns the values checked."""
        model, dtype = job["model"], job["dtype"]
        texts = [l if isinstance(l, str) else l["prompt"] for l in lines]
        tokens = rm.hf_tokens(model, texts, job.get("add_special_tokens", True))
        checked = 0
        with h5py.File(out, "r") as f:
            self.assertEqual(f["prompts/n_tokens"][()].tolist(), [len(t) for t in tokens],
                             "ndif-sweep's token counts differ from the model's own tokenizer")
            done = f["batches/done"][()]
            positions = f["prompts/positions"][()]
            for batch, rows in rm.file_batches(f):
                if not done[batch]:
                    continue
                want = rm.traced_batch(model, job["probes"], [tokens[r] for r in rows],
                                       [positions[r].tolist() for r in rows], dtype)
                for name, values in want.items():
                    got = f[f"acts/{name}"][np.sort(rows)]
                    got = got[np.argsort(np.argsort(rows))]  # back to the batch's send order
                    self.assertEqual(got.tobytes(), values.tobytes(), f"probe {name}, batch {batch}")
                    checked += values.size
        return checked

    def assert_nothing_written(self, result, out):
        self.assertFalse(out.exists(), f"{out} was written\n{result.describe()}")
        self.assertFalse(list(self.dir.glob("*.tmp*")), "a temporary output file was left")


class ExactSweeps(PeerTestCase):
    def test_llama_float16_many_batches_one_process(self):
        lines = prompt_lines()
        job_path, job = self.job(lines, positions=[-1, 1],
                                 batch={"target_mb": 0.004, "max_prompts": 8, "max_tokens": 4096, "sort_by_length": True})
        result = self.run_sweep(job_path)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("tokenizer canary", result.stderr)
        out = self.dir / "out.h5"
        with h5py.File(out, "r") as f:
            self.assertGreater(f["batches/done"].shape[0], 4)
            self.assertTrue(f["batches/done"][()].all())
            self.assertEqual(harness.attr_str(f.attrs["model_key"]),
                             'nnsight.modeling.transformers.TransformersModel:'
                             '{"repo_id": "ndif-sweep-test/tiny-llama", "revision": null, "task": "text-generation"}')
        self.assertGreater(self.check_exact(out, job, lines), 0)

    def test_gpt2_bfloat16_on_two_ranks(self):
        lines = prompt_lines(30, seed=8)
        job_path, job = self.job(lines, model=rm.GPT2, dtype="bfloat16", positions=[0, -1],
                                 batch={"target_mb": 0.002, "max_prompts": 6, "max_tokens": 4096, "sort_by_length": True})
        result = self.run_sweep(job_path, ranks=2)
        self.assertEqual(result.returncode, 0, result.describe())
        # One encoder serves both ranks of this node.
        self.assertEqual(len({l.split()[2] for l in result.stderr.splitlines()
                              if l.startswith("ndif-sweep: encoder ") and ": serving " in l}), 1, result.stderr)
        self.assertGreater(self.check_exact(self.dir / "out.h5", job, lines), 0)

    def test_float32_and_each_prompt_alone_within_the_tolerance(self):
        for model in (rm.LLAMA, rm.GPT2):
            with self.subTest(model=model):
                (self.dir / "out.h5").unlink(missing_ok=True)
                lines = prompt_lines(12, seed=11)
                job_path, job = self.job(lines, model=model, dtype="float32")
                result = self.run_sweep(job_path)
                self.assertEqual(result.returncode, 0, result.describe())
                out = self.dir / "out.h5"
                self.check_exact(out, job, lines)
                texts = [l if isinstance(l, str) else l["prompt"] for l in lines]
                tokens = rm.hf_tokens(model, texts)
                with h5py.File(out, "r") as f:
                    positions = f["prompts/positions"][()]
                    worst = 0.0
                    for row, t in enumerate(tokens):
                        alone = rm.alone_values(model, job["probes"], t, positions[row].tolist(), "float32")
                        for name, values in alone.items():
                            worst = max(worst, float(np.abs(f[f"acts/{name}"][row] - values).max()))
                self.assertLessEqual(worst, ALONE_TOLERANCE, f"{model}: largest deviation {worst}")

    def test_model_files_from_a_directory_instead_of_the_cache(self):
        snapshot = next((rm.hf_cache() / "models--ndif-sweep-test--tiny-llama" / "snapshots").iterdir())
        self.assertFalse(list(snapshot.glob("*.safetensors")), "the skeleton's files hold no weights")
        empty = self.dir / "empty-cache"
        empty.mkdir()
        lines = prompt_lines(8, seed=12)
        job_path, job = self.job(lines)
        without = self.run_sweep(job_path, env=self.env(HF_HUB_CACHE=str(empty)))
        self.assertEqual(without.returncode, 2, without.describe())
        self.assertIn("cannot build the meta skeleton", without.stderr)
        self.assertIn("hf download ndif-sweep-test/tiny-llama", without.stderr)
        self.assertFalse((self.dir / "out.h5").exists())
        result = self.run_sweep(job_path, env=self.env(HF_HUB_CACHE=str(empty), NDIF_SWEEP_MODEL_DIR=str(snapshot)))
        self.assertEqual(result.returncode, 0, result.describe())
        self.check_exact(self.dir / "out.h5", job, lines)

    def test_without_position_ids_gpt2_would_drift(self):
        # What the position ids protect against: GPT-2 left-padded without them reads a padded
        # prompt at shifted absolute positions, far outside the tolerance ndif-sweep keeps.
        lines = ["Hi there", harness.long_text(40, seed=2)]
        tokens = rm.hf_tokens(rm.GPT2, lines)
        positions = [[len(t) - 1] for t in tokens]
        shifted = rm.padded_without_position_ids(rm.GPT2, rm.PROBES[rm.GPT2], tokens, positions, "float32")
        alone = rm.alone_values(rm.GPT2, rm.PROBES[rm.GPT2], tokens[0], positions[0], "float32")
        drift = max(float(np.abs(shifted[name][0] - alone[name]).max()) for name in alone)
        self.assertGreater(drift, 10 * ALONE_TOLERANCE)


class Secrets(PeerTestCase):
    def test_the_encoder_never_sees_the_api_key(self):
        import subprocess
        import time
        lines = prompt_lines(20, seed=41)
        job_path, _ = self.job(lines, max_inflight=1,
                               batch={"target_mb": 0.002, "max_prompts": 1, "max_tokens": 4096, "sort_by_length": True})
        proc = self.own_process(subprocess.Popen(
            harness.sweep_cmd("run", job_path, "--progress", "none"), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=self.env(), start_new_session=True))
        encoders = 0
        while proc.poll() is None:
            for pid in harness.descendants(proc.pid):
                cmdline = harness.proc_read(pid, "cmdline") or b""
                environ = harness.proc_read(pid, "environ") or b""
                self.assertNotIn(rm.API_KEY.encode(), cmdline, f"pid {pid}")
                if b"ndif_sweep.encoder" in cmdline:
                    # The ranks read the key from their environment; the encoder gets none of it.
                    encoders += 1
                    self.assertNotIn(rm.API_KEY.encode(), environ)
                    self.assertNotIn(b"NDIF_API_KEY=", environ)
                    self.assertIn(b"HF_HUB_OFFLINE=1", environ)
            time.sleep(0.02)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 0, err.decode())
        self.assertGreater(encoders, 0, "the encoder was never seen running")
        self.assertNotIn(rm.API_KEY.encode(), out + err + (self.dir / "out.h5").read_bytes())


class ServerFaults(PeerTestCase):
    peer_args = ("--fail-rate", "0.5", "--fail-seed", "3",
                 "--fail-kinds", "http500,http503,error_status,expired_url,truncate,slow,payload_error",
                 "--slow-s", "0.3")

    def test_transient_faults_are_retried_to_an_exact_file(self):
        lines = prompt_lines(24, seed=13)
        job_path, job = self.job(lines, batch={"target_mb": 0.003, "max_prompts": 4, "max_tokens": 4096,
                                               "sort_by_length": True})
        result = self.run_sweep(job_path, ranks=2)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("retrying", result.stderr)
        self.assertGreater(self.check_exact(self.dir / "out.h5", job, lines), 0)
        self.assertGreater(self.peer.stats()["errored"], 0)


class DamagedResults(PeerTestCase):
    peer_args = ("--fail-rate", "1", "--fail-kinds", "bad_zstd")

    def test_undecodable_results_fail_their_batches_and_the_file_resumes_elsewhere(self):
        lines = prompt_lines(8, seed=17)
        job_path, job = self.job(lines)
        result = self.run_sweep(job_path)
        self.assertEqual(result.returncode, 3, result.describe())
        clean = rm.Peer()
        try:
            resumed = self.run_sweep(job_path, "--endpoint", clean.url)
        finally:
            clean.stop()
        self.assertEqual(resumed.returncode, 0, resumed.describe())
        self.assertIn("resuming", resumed.stderr)
        self.check_exact(self.dir / "out.h5", job, lines)


class RefusedBeforeAnyJob(PeerTestCase):
    """Each of these is decided before the output file exists and before any job is sent."""

    def expect_refusal(self, code, words, lines=("Hello world", "A second prompt"), env=None, **fields):
        before = self.peer.stats()["submitted"]
        job_path, _ = self.job(list(lines), **fields)
        result = self.run_sweep(job_path, env=env)
        self.assertEqual(result.returncode, code, result.describe())
        for word in words:
            self.assertIn(word, result.stderr, result.describe())
        self.assertNotIn(rm.API_KEY, result.stderr + result.stdout)
        self.assert_nothing_written(result, self.dir / "out.h5")
        self.assertEqual(self.peer.stats()["submitted"], before, "a job was sent")
        return result

    def test_an_interpreter_without_nnsight_is_exit_2(self):
        self.expect_refusal(2, ["cannot import nnsight", "\"python\" key or NDIF_SWEEP_PYTHON"], python="/usr/bin/python3")

    def test_an_interpreter_that_does_not_exist_is_exit_2(self):
        self.expect_refusal(2, ["cannot start the nnsight encoder"], python=str(self.dir / "no-such-python"))

    def test_a_model_that_is_not_deployed_is_exit_2(self):
        self.expect_refusal(2, ["\"ndif-sweep-test/not-there\" is not deployed", "tiny-llama"],
                            model="ndif-sweep-test/not-there", tokenizer=str(harness.tokenizer_file("llama3_1")),
                            probes=rm.PROBES[rm.LLAMA])

    def test_a_model_key_the_server_does_not_list_is_exit_2(self):
        self.expect_refusal(2, ["\"model_key\"", "is not a deployment"],
                            model_key='nnsight.modeling.transformers.TransformersModel:{"repo_id": "x"}')

    def test_a_probe_module_the_model_does_not_have_is_exit_2(self):
        probes = [{"name": "resid", "module": "model.layerz.{layer}", "output_index": None, "layers": [1]}]
        self.expect_refusal(2, ["probe \"resid\" layer 1", "has no such module"], probes=probes)

    def test_an_output_index_on_a_tensor_output_is_exit_2(self):
        probes = [{"name": "resid", "module": "model.layers.{layer}", "output_index": 0, "layers": [1]}]
        self.expect_refusal(2, ["returns a tensor, not a tuple", "\"output_index\" to null"], probes=probes)

    def test_a_tokenizer_that_is_not_the_models_is_exit_2_naming_the_prompt(self):
        # Qwen3's tokenizer gives other ids than Llama-3.1's (and no BOS).
        self.expect_refusal(2, ["prompts.jsonl:1:", "model's own tokenizer gives", "\"tokenizer\""],
                            tokenizer=str(harness.tokenizer_file("qwen3")))

    def test_a_wrong_api_key_is_exit_5(self):
        env = self.env(NDIF_API_KEY="3f0e8c52-1b7d-4a9e-8c6f-000000000000")
        result = self.expect_refusal(5, ["refused the API key", "HTTP 403"], env=env)
        self.assertNotIn("3f0e8c52-1b7d-4a9e-8c6f-000000000000", result.stderr)

    def test_a_malformed_api_key_is_exit_5_and_never_shown(self):
        env = self.env(NDIF_API_KEY="not-a-uuid-secret")
        result = self.expect_refusal(5, ["HTTP 400", "<the API key>"], env=env)
        self.assertNotIn("not-a-uuid-secret", result.stderr + result.stdout)


class VersionMismatch(PeerTestCase):
    peer_args = ("--env-nnsight-version", "0.7.0")

    def test_an_nnsight_other_than_the_servers_is_exit_5_before_any_job(self):
        job_path, _ = self.job(["Hello world"])
        result = self.run_sweep(job_path)
        self.assertEqual(result.returncode, 5, result.describe())
        self.assertIn("differs from the nnsight 0.7.0", result.stderr)
        self.assertIn("pip install nnsight==0.7.0", result.stderr)
        self.assert_nothing_written(result, self.dir / "out.h5")
        self.assertEqual(self.peer.stats()["submitted"], 0)


class EncoderFaults(PeerTestCase):
    def run_with_fault(self, fault, lines, **fields):
        job_path, job = self.job(lines, batch={"target_mb": 0.003, "max_prompts": 3, "max_tokens": 4096,
                                               "sort_by_length": True}, **fields)
        env = self.env(NDIF_SWEEP_ENCODER_TEST_FAULT=fault)
        return self.run_sweep(job_path, env=env), job

    def test_a_crashing_encoder_is_started_again_and_its_batch_retried(self):
        lines = prompt_lines(10, seed=21)
        result, job = self.run_with_fault("crash:2", lines)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("starting the encoder again", result.stderr)
        self.check_exact(self.dir / "out.h5", job, lines)

    def test_a_hanging_encoder_times_out_and_is_replaced(self):
        lines = prompt_lines(6, seed=22)
        marker = self.dir / "hung-once"
        result, job = self.run_with_fault(f"hang:1:{marker}", lines,
                                          timeouts={"connect_s": 10, "request_s": 4, "job_s": 120, "poll_interval_s": 0.05})
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("no answer within 4 s", result.stderr)
        self.assertTrue(marker.exists())
        self.check_exact(self.dir / "out.h5", job, lines)

    def test_garbage_on_the_socket_is_survived(self):
        lines = prompt_lines(6, seed=23)
        result, job = self.run_with_fault(f"garbage:1:{self.dir / 'garbled-once'}", lines)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertIn("not a frame", result.stderr)
        self.check_exact(self.dir / "out.h5", job, lines)

    def test_results_of_another_dtype_shape_or_variable_fail_their_batch_and_resume(self):
        lines = prompt_lines(6, seed=24)
        for fault, words in (("wrong_dtype", "dtype float32, expected float16"),
                             ("wrong_shape", ", 7, 1, 64), expected ("),
                             ("wrong_name", "no saved variable \"ndif_sweep_acts\"")):
            with self.subTest(fault=fault):
                marker = self.dir / f"{fault}-once"
                result, job = self.run_with_fault(f"{fault}:1:{marker}", lines)
                self.assertEqual(result.returncode, 3, result.describe())
                self.assertIn(words, result.stderr)
                resumed = self.run_sweep(self.dir / "job.json")
                self.assertEqual(resumed.returncode, 0, resumed.describe())
                self.check_exact(self.dir / "out.h5", job, lines)
                (self.dir / "out.h5").unlink()

    def test_a_server_whose_module_tree_differs_rejects_batches_with_its_own_words(self):
        # The Llama skeleton sent to the GPT-2 deployment (same shape, other modules): ndif's
        # architecture-mismatch error, not retried; the run stops after a few such batches.
        gpt2_key = ('nnsight.modeling.transformers.TransformersModel:'
                    '{"repo_id": "ndif-sweep-test/tiny-gpt2", "revision": null, "task": "text-generation"}')
        before = self.peer.stats()["submitted"]
        lines = prompt_lines(20, seed=25)
        job_path, _ = self.job(lines, model_key=gpt2_key,
                               batch={"target_mb": 0.003, "max_prompts": 2, "max_tokens": 4096, "sort_by_length": True})
        result = self.run_sweep(job_path)
        self.assertEqual(result.returncode, 5, result.describe())
        self.assertIn("The model architecture on this server doesn't match", result.stderr)
        self.assertIn("rejected by the service and is not retried", result.stderr)
        self.assertIn("in a row were rejected", result.stderr)
        with h5py.File(self.dir / "out.h5", "r") as f:
            batches = f["batches/done"].shape[0]
        sent = self.peer.stats()["submitted"] - before
        self.assertLess(sent, batches, "every batch was sent although the requests were all rejected")


class Check(PeerTestCase):
    def test_every_check_passes_and_the_probe_job_has_the_asked_shape(self):
        job_path, _ = self.job(prompt_lines(6, seed=31))
        before = self.peer.stats()["submitted"]
        result = harness.sweep("check", job_path, "--probe", env=self.env(), timeout=300)
        self.assertEqual(result.returncode, 0, result.describe())
        for line in ("ok    deployment  ndif-sweep-test/tiny-llama is HOT", "ok    server      nnsight 0.8.1",
                     "ok    key check   the service accepts the API key", "ok    canary",
                     "ok    probe       a 1-prompt job (row 0) came back", "(1, 7, 2, 64) float16",
                     "every check passed"):
            self.assertIn(line, result.stdout)
        self.assertEqual(self.peer.stats()["submitted"], before + 1, "the probe is the one job check sends")
        self.assertFalse((self.dir / "out.h5").exists())
        as_json = harness.sweep("check", job_path, "--json", env=self.env(), timeout=300)
        self.assertEqual(as_json.returncode, 0, as_json.describe())
        report = json.loads(as_json.stdout)
        self.assertTrue(report["ok"])
        self.assertEqual({c["name"]: c["status"] for c in report["checks"]}["probe"], "skip")
        self.assertEqual({c["status"] for c in report["checks"]} - {"ok", "skip"}, set())
        self.assertEqual(self.peer.stats()["submitted"], before + 1)

    def test_a_failing_check_names_the_fix_and_gives_its_exit_code(self):
        job_path, _ = self.job(["Hello world"], python="/usr/bin/python3")
        result = harness.sweep("check", job_path, "--json", env=self.env(), timeout=300)
        self.assertEqual(result.returncode, 2, result.describe())
        checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
        self.assertEqual(checks["encoder"]["status"], "fail")
        self.assertIn("cannot import nnsight", checks["encoder"]["detail"])
        self.assertEqual(checks["encode"]["status"], "skip")
        refused = harness.sweep("check", job_path, env=self.env(NDIF_API_KEY="3f0e8c52-1b7d-4a9e-8c6f-000000000000"),
                                timeout=120)
        self.assertEqual(refused.returncode, 5, refused.describe())
        self.assertIn("FAIL  key check", refused.stdout)
        self.assertNotIn("3f0e8c52-1b7d-4a9e-8c6f-000000000000", refused.stdout + refused.stderr)


if __name__ == "__main__":
    harness.main()
