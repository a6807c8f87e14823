"""Exact sweeps: every stored activation equals the synthetic model's value bit for bit, for
prompts of very different lengths, positive and negative positions, several probes, every dtype,
1 to 3 ranks, the bundled server and an ndif-local started here (G4 and G2), one batch and many."""

import json

import numpy as np
import h5py

import harness
from harness import TempDirTestCase, make_job, sweep, Expectation, check_file


def mixed_length_prompts():
    """1-2 tokens up to 300+ tokens, with default positions and per-line positions that mix
    positive and negative indices (P = 2 everywhere)."""
    lines = ["Hi", "Hello world", {"prompt": harness.long_text(340), "positions": [5, -2], "id": "long"}]
    lines += harness.varied_prompts(30, seed=3)
    lines += [{"prompt": harness.long_text(120, seed=2), "positions": [-3, 1], "meta": {"kind": "medium"}},
              {"prompt": "東京の天気は晴れです 🙂", "positions": [1, -1], "id": 77},
              harness.long_text(60, seed=4)]
    return lines


class ExactSweep(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self)

    def sweep_and_check(self, lines, ranks=None, extra_args=(), tokenizer="llama3_1", model=None,
                        one_batch=True, **job_fields):
        job_fields.setdefault("tokenizer", str(harness.tokenizer_file(tokenizer)))
        job_path, job = make_job(self.dir, lines, **job_fields)
        expect = Expectation(job, lines, tokenizer=tokenizer, model=model)
        result = sweep("run", job_path, "--progress", "lines", *extra_args, ranks=ranks, timeout=240)
        self.assertEqual(result.returncode, 0, result.describe())
        out = self.dir / "out.h5"
        rows, values = check_file(self, out, expect)
        self.assertEqual(rows, len(lines))
        self.assertGreater(values, 0)
        with h5py.File(out, "r") as f:
            if one_batch:
                self.assertEqual(f["batches/done"].shape, (1,), "the prompts should fit one batch")
            self.check_batch_index(f, len(lines))
        return out, expect

    def check_batch_index(self, f, n):
        """/batches/order is a permutation of the rows, and start/count place each row's batch."""
        order = f["batches/order"][()]
        self.assertEqual(sorted(order.tolist()), list(range(n)))
        start, count = f["batches/start"][()], f["batches/count"][()]
        batch_of_row = f["prompts/batch"][()]
        self.assertEqual(int(count.sum()), n)
        for b in range(len(start)):
            for row in order[start[b]:start[b] + count[b]]:
                self.assertEqual(batch_of_row[row], b)

    def test_one_batch_mixed_lengths_single_process_float16(self):
        lines = mixed_length_prompts()
        out, expect = self.sweep_and_check(lines)
        lengths = [len(t) for t in expect.tokens]
        self.assertLessEqual(min(lengths), 3)
        self.assertGreaterEqual(max(lengths), 300)
        with h5py.File(out, "r") as f:
            self.assertIn("job_hash", f.attrs)
            self.assertNotIn(harness.API_KEY, harness.attr_str(f.attrs["job"]))
            meta = [json.loads(m) for m in harness.strings(f["prompts/meta"])]
            self.assertEqual(meta[-3], {"kind": "medium"})

    def test_one_batch_bfloat16_on_one_two_and_three_ranks(self):
        lines = mixed_length_prompts()
        for ranks in (1, 2, 3):
            with self.subTest(ranks=ranks):
                (self.dir / "out.h5").unlink(missing_ok=True)
                self.sweep_and_check(lines, ranks=ranks, dtype="bfloat16")

    def test_float32_output(self):
        self.sweep_and_check(mixed_length_prompts()[:12], ranks=2, dtype="float32")

    def test_three_positions_zero_last_and_two(self):
        lines = [t for t in harness.varied_prompts(40, seed=9) if len(t.split(" ")) >= 3]
        lines.append(harness.long_text(310, seed=5))
        self.sweep_and_check(lines, ranks=2, positions=[0, -1, 2])

    def test_single_token_prompts_without_special_tokens(self):
        lines = ["Hello", "world", " the", harness.long_text(305, seed=6), "A longer prompt of a few words"]
        out, expect = self.sweep_and_check(lines, add_special_tokens=False, dtype="bfloat16")
        self.assertEqual(len(expect.tokens[0]), 1)

    def test_many_batches_scatter_rows_across_ranks(self):
        lines = mixed_length_prompts() + harness.varied_prompts(40, seed=11)
        # About 900 bytes of saved data per prompt: a few prompts per batch.
        out, _ = self.sweep_and_check(lines, ranks=3, one_batch=False,
                                      batch={"target_mb": 0.004, "max_prompts": 256, "max_tokens": 32768,
                                             "sort_by_length": True})
        with h5py.File(out, "r") as f:
            self.assertGreater(f["batches/done"].shape[0], 8)
            order = f["batches/order"][()]
            self.assertNotEqual(order.tolist(), sorted(order.tolist()), "the length sort should reorder rows")

    def test_every_rank_plans_with_rank_0s_job_even_when_its_own_job_file_says_otherwise(self):
        # MPMD: rank 1 is started with another job file (other positions, another prompts file, as an
        # edit between the ranks' starts or another node's copy would give). Rank 0's job is the one
        # every rank measures its part of the prompts with; the file holds exactly that job.
        lines = [t for t in harness.varied_prompts(12, seed=21) if len(t.split(" ")) >= 3]
        job_path, job = make_job(self.dir, lines, positions=[-1, 1])
        other = self.dir / "other"
        other.mkdir()
        other_job, _ = make_job(other, list(reversed(lines)), positions=[0, 2])
        expect = Expectation(job, lines)
        command = (["mpirun", "-np", "1"] + harness.sweep_cmd("run", job_path, "--progress", "lines")
                   + [":", "-np", "1"] + harness.sweep_cmd("run", other_job, "--progress", "lines"))
        result = harness.run(command, timeout=240)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertFalse((other / "out.h5").exists())
        rows, _ = check_file(self, self.dir / "out.h5", expect)
        self.assertEqual(rows, len(lines))

        # Span positions travel too: the MPMD run stores what one process running rank 0's job stores.
        spans = self.dir / "spans"
        spans.mkdir()
        span_lines = [f"{t} and the end of the line" for t in lines]
        span_positions = [{"span": "the", "occurrence": -1, "token": "first"}, -1]
        span_job, _ = make_job(spans, span_lines, positions=span_positions, output="one.h5")
        result = harness.sweep("run", span_job, "--progress", "lines", timeout=240)
        self.assertEqual(result.returncode, 0, result.describe())
        command = (["mpirun", "-np", "1"]
                   + harness.sweep_cmd("run", span_job, "--output", spans / "two.h5", "--progress", "lines")
                   + [":", "-np", "1"] + harness.sweep_cmd("run", other_job, "--progress", "lines"))
        result = harness.run(command, timeout=240)
        self.assertEqual(result.returncode, 0, result.describe())
        with h5py.File(spans / "one.h5", "r") as one, h5py.File(spans / "two.h5", "r") as two:
            self.assertEqual(one["prompts/positions"][()].tolist(), two["prompts/positions"][()].tolist())
            self.assertNotEqual(one["prompts/positions"][()][:, 0].tolist(),
                                one["prompts/positions"][()][:, 1].tolist())
            self.assertTrue(all(two["batches/done"][()]))
            for name in one["acts"]:
                self.assertTrue(np.array_equal(one["acts"][name][()], two["acts"][name][()]), name)

    def test_max_prompts_batches_without_length_sort(self):
        lines = mixed_length_prompts()
        out, _ = self.sweep_and_check(lines, ranks=2, one_batch=False, dtype="bfloat16",
                                      batch={"target_mb": 32, "max_prompts": 4, "max_tokens": 32768,
                                             "sort_by_length": False})
        with h5py.File(out, "r") as f:
            self.assertEqual(f["batches/done"].shape[0], (len(lines) + 3) // 4)
            np.testing.assert_array_equal(f["batches/order"][()], np.arange(len(lines)))

    def test_own_ndif_local_through_endpoint_flag_with_gpt2(self):
        # A float16 model converted to bfloat16 on the server, shape read from GET /status.
        server = self.start_server("--layers", "5", "--hidden", "24", "--seed", "7", "--model-dtype", "float16")
        self.assertTrue(server.port_file.exists())
        self.assertEqual(server.url, f"http://127.0.0.1:{int(server.port_file.read_text().strip())}")
        lines = ["Hello world, this is GPT-2.", harness.long_text(320, seed=8)] + harness.varied_prompts(20, seed=4)
        lines = [l for l in lines if l.strip()]
        model = {"layers": 5, "hidden": 24, "seed": 7, "model_dtype": "float16"}
        probes = [{"name": "resid", "module": "model.layers.{layer}", "output_index": 0, "layers": "1:5:2"},
                  {"name": "mlp", "module": "model.layers.{layer}.mlp", "output_index": None, "layers": [4, 0]}]
        # G4 (multipart, /response 404 until stored, expiring URL, zstd) and the older G2 alike.
        for protocol in ("g4", "g2"):
            with self.subTest(protocol=protocol):
                (self.dir / "out.h5").unlink(missing_ok=True)
                self.sweep_and_check(lines, ranks=2, extra_args=("--endpoint", server.url), tokenizer="gpt2",
                                     model=model, probes=probes, dtype="bfloat16", local=model, protocol=protocol)


if __name__ == "__main__":
    harness.main()
