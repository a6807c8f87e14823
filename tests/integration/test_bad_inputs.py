"""Broken job specs and prompts files: `run` and `plan` exit 2 with a message naming the file and
the line or key, create no output file and leave an existing one byte for byte unchanged; a file
that belongs to another job (or is not HDF5) is exit 4 and also left untouched."""

import json
import os
import shutil
import time

import harness
from harness import TempDirTestCase, make_job, sweep, file_fingerprint

GOOD_LINES = ["The cat sat on the mat", "Hello world", "A third prompt here", "And a fourth one"]


def replace_line(index, value):
    """A prompts edit that replaces line `index` (0-based) with raw text."""
    def edit(lines):
        lines[index] = value
        return lines
    return edit


# name -> (job field changes (None deletes a key), prompts edit on the raw text lines or None,
#          extra files {name: bytes}, substrings stderr must contain, whether the job keeps "output")
CASES = {
    "job_invalid_json": ("RAW_JOB", None, {}, ["job.json:3:"], True),
    "unknown_key": ({"modle": "x"}, None, {}, ["job.json", "modle"], True),
    "missing_model": ({"model": None}, None, {}, ["job.json", '"model"'], True),
    "missing_tokenizer": ({"tokenizer": None}, None, {}, ["job.json", '"tokenizer"'], True),
    "missing_prompts": ({"prompts": None}, None, {}, ["job.json", '"prompts"'], True),
    "missing_output": ({"output": None}, None, {}, ["job.json", '"output"'], False),
    "missing_probes": ({"probes": None}, None, {}, ["job.json", '"probes"'], True),
    "bad_dtype": ({"dtype": "float8"}, None, {}, ["job.json", "dtype", "float8"], True),
    "bad_layer_range": ({"probes": [{"name": "resid", "module": "model.layers.{layer}", "layers": "0:x"}]},
                        None, {}, ["job.json", "probes[0].layers", "0:x"], True),
    "layer_beyond_model": ({"probes": [{"name": "resid", "module": "model.layers.{layer}", "layers": [0, 9]}]},
                           None, {}, ["job.json", "probes[0]", "9"], True),
    "target_mb_string": ({"batch": {"target_mb": "32"}}, None, {}, ["job.json", "target_mb", '"32"'], True),
    "api_key_in_job": ({"api_key": "sk-should-not-be-here"}, None, {}, ["job.json", "api_key"], True),
    "prompt_line_not_json": ({}, replace_line(2, "this is not json"), {}, ["prompts.jsonl:3"], True),
    "prompt_line_unknown_key": ({}, replace_line(1, '{"prompt": "x y", "colour": 1}'), {},
                                ["prompts.jsonl:2", "colour"], True),
    "positions_not_ints": ({}, replace_line(3, '{"prompt": "x y z", "positions": "last"}'), {},
                           ["prompts.jsonl:4", "positions"], True),
    "position_out_of_range": ({}, replace_line(1, '{"prompt": "Hello world", "positions": [0, 40]}'), {},
                              ["prompts.jsonl:2", "40"], True),
    "position_count_differs": ({}, replace_line(2, '{"prompt": "Hello world", "positions": [0]}'), {},
                               ["prompts.jsonl:3"], True),
    "duplicate_id": ({}, lambda l: [json.dumps({"prompt": "a b", "id": "same"}), l[1],
                                    json.dumps({"prompt": "c d", "id": "same"}), l[3]], {},
                     ["prompts.jsonl:3", "same"], True),
    "invalid_utf8": ({}, replace_line(1, b'"caf\xe9 au lait"'), {}, ["prompts.jsonl:2", "UTF-8"], True),
    "nul_in_prompt": ({}, replace_line(2, '{"prompt": "a\\u0000b", "id": "n"}'), {},
                      ["prompts.jsonl:3", "U+0000"], True),
    "empty_prompts_file": ({}, lambda l: [], {}, ["prompts.jsonl", "empty"], True),
    "absent_span": ({}, replace_line(1, '{"prompt": "The cat sat", "positions": [{"span": "dog"}, -1]}'), {},
                    ["prompts.jsonl:2", "dog"], True),
    "missing_tokenizer_file": ({"tokenizer": "no_such_tokenizer.json"}, None, {}, ["no_such_tokenizer.json"], True),
    "tokenizer_not_json": ({"tokenizer": "broken_tokenizer.json"}, None,
                           {"broken_tokenizer.json": b'{"model": {"type": "BPE", '}, ["broken_tokenizer.json"], True),
}


class BadInputs(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self, "ndif-sweep")

    def write_case(self, directory, name):
        fields, edit, files, _, _ = CASES[name]
        directory.mkdir()
        job_path, job = make_job(directory, GOOD_LINES)
        if fields == "RAW_JOB":
            job_path.write_text('{\n  "model": "synthetic/llama-like"\n  "tokenizer": "t.json"\n}\n')
        else:
            for key, value in fields.items():
                if value is None:
                    job.pop(key)
                else:
                    job[key] = value
            job_path.write_text(json.dumps(job, indent=2))
        if edit is not None:
            lines = [json.dumps(l) for l in GOOD_LINES]
            raw = [l if isinstance(l, bytes) else l.encode("utf-8") for l in edit(lines)]
            (directory / "prompts.jsonl").write_bytes(b"".join(l + b"\n" for l in raw))
        for file_name, content in files.items():
            (directory / file_name).write_bytes(content)
        return job_path

    def assert_rejected(self, result, name):
        self.assertEqual(result.returncode, 2, f"{name}: " + result.describe())
        for needle in CASES[name][3]:
            self.assertIn(needle, result.stderr, f"{name}: stderr lacks {needle!r}\n" + result.describe())

    def test_each_broken_input_is_exit_2_and_writes_nothing(self):
        self.assertGreaterEqual(len(CASES), 15)
        for name in CASES:
            with self.subTest(case=name):
                directory = self.dir / name
                job_path = self.write_case(directory, name)
                for command in ("plan", "run"):
                    self.assert_rejected(sweep(command, job_path, timeout=60), name)
                    self.assertFalse((directory / "out.h5").exists(), f"{name}: {command} created the output")
                    leftovers = [p.name for p in directory.iterdir() if p.name.startswith("out.h5")]
                    self.assertEqual(leftovers, [], f"{name}: {command} left {leftovers}")

    def test_a_bad_line_in_another_ranks_part_of_the_prompts_is_the_same_exit_2(self):
        # Three ranks measure rows [0, 1), [1, 2) and [2, 4): these lines lie in rank 1's or rank 2's
        # part, and the repeated id spans rank 0's and rank 2's. Rank 0 reports the first bad line
        # of the file, once, as one process does.
        names = ["prompt_line_not_json", "prompt_line_unknown_key", "positions_not_ints",
                 "position_out_of_range", "duplicate_id", "invalid_utf8", "absent_span"]
        for name in names:
            with self.subTest(case=name):
                directory = self.dir / ("ranks_" + name)
                job_path = self.write_case(directory, name)
                result = sweep("run", job_path, ranks=3, timeout=120)
                self.assert_rejected(result, name)
                self.assertEqual(result.stderr.count("prompts.jsonl:"), 1, result.describe())
                self.assertFalse((directory / "out.h5").exists(), f"{name}: the run created the output")
        # Two bad lines in two ranks' parts: the first in the file is the one reported.
        directory = self.dir / "ranks_two_bad"
        job_path = self.write_case(directory, "prompt_line_not_json")
        lines = (directory / "prompts.jsonl").read_text().splitlines()
        lines[1] = '{"prompt": "Hello world", "positions": [0, 40]}'
        (directory / "prompts.jsonl").write_text("\n".join(lines) + "\n")
        result = sweep("run", job_path, ranks=3, timeout=120)
        self.assertEqual(result.returncode, 2, result.describe())
        self.assertIn("prompts.jsonl:2:", result.stderr, result.describe())
        self.assertNotIn("prompts.jsonl:3", result.stderr, result.describe())

    def test_each_broken_input_leaves_an_existing_output_unchanged(self):
        good_dir = self.dir / "good"
        good_dir.mkdir()
        good_job, _ = make_job(good_dir, GOOD_LINES)
        result = sweep("run", good_job, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        good_file = good_dir / "out.h5"
        for name, case in CASES.items():
            if not case[4]:
                continue
            with self.subTest(case=name):
                directory = self.dir / name
                job_path = self.write_case(directory, name)
                target = directory / "out.h5"
                shutil.copy2(good_file, target)
                before = file_fingerprint(target)
                time.sleep(0.01)
                for command in ("plan", "run"):
                    self.assert_rejected(sweep(command, job_path, timeout=60), name)
                    self.assertEqual(file_fingerprint(target), before, f"{name}: {command} changed the output")

    def test_bad_flags_are_exit_2_before_anything_is_opened_also_on_a_complete_file(self):
        job_path, _ = make_job(self.dir, GOOD_LINES)
        result = sweep("run", job_path, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        target = self.dir / "out.h5"
        before = file_fingerprint(target)
        runs_before = harness.status_json(target)["runs"]
        time.sleep(0.01)
        cases = {
            ("--max-inflight", "0"): "--max-inflight: must be at least 1, got 0",
            ("--max-inflight", "-3"): "--max-inflight: must be at least 1, got -3",
            ("--max-inflight", "two"): "--max-inflight",
            ("--progress", "fancy"): "--progress: expected auto, bar, lines, jsonl or none",
            ("--endpoint", "ftp://example"): "ftp://example",
            ("--output", str(self.dir / "no_such_dir" / "x.h5")): "no_such_dir",
            ("--unknown-flag",): "--unknown-flag",
        }
        for flags, needle in cases.items():
            for ranks in (None, 2):
                with self.subTest(flags=flags, ranks=ranks):
                    result = sweep("run", job_path, *flags, ranks=ranks, timeout=60)
                    self.assertEqual(result.returncode, 2, result.describe())
                    self.assertIn(needle, result.stderr + result.stdout)
                    self.assertEqual(file_fingerprint(target), before, f"{flags} changed the file")
        self.assertEqual(harness.status_json(target)["runs"], runs_before)

    def test_output_path_that_is_a_directory_is_exit_2(self):
        job_path, _ = make_job(self.dir, GOOD_LINES, output="outdir")
        (self.dir / "outdir").mkdir()
        result = sweep("run", job_path, timeout=60)
        self.assertEqual(result.returncode, 2, result.describe())
        self.assertIn("outdir", result.stderr)
        self.assertEqual(list((self.dir / "outdir").iterdir()), [])

    def test_another_jobs_file_is_exit_4_and_unchanged(self):
        job_a, _ = make_job(self.dir, GOOD_LINES)
        result = sweep("run", job_a, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        before = file_fingerprint(self.dir / "out.h5")
        time.sleep(0.01)
        # Job B differs only in its dtype: same shape of file, another job.
        job_b, _ = make_job(self.dir, GOOD_LINES, dtype="bfloat16")
        result = sweep("run", job_b, timeout=120)
        self.assertEqual(result.returncode, 4, result.describe())
        self.assertIn("out.h5", result.stderr)
        self.assertEqual(file_fingerprint(self.dir / "out.h5"), before)
        result = sweep("run", job_b, ranks=2, timeout=120)
        self.assertEqual(result.returncode, 4, result.describe())
        self.assertEqual(file_fingerprint(self.dir / "out.h5"), before)

    def test_a_text_file_at_the_output_path_is_exit_4_and_unchanged(self):
        job_path, _ = make_job(self.dir, GOOD_LINES)
        target = self.dir / "out.h5"
        target.write_text("not an HDF5 file\n")
        before = file_fingerprint(target)
        result = sweep("run", job_path, timeout=120)
        self.assertEqual(result.returncode, 4, result.describe())
        self.assertIn("out.h5", result.stderr)
        self.assertEqual(file_fingerprint(target), before)

    def test_a_truncated_output_file_is_exit_4_and_unchanged(self):
        job_path, _ = make_job(self.dir, GOOD_LINES)
        result = sweep("run", job_path, timeout=120)
        self.assertEqual(result.returncode, 0, result.describe())
        target = self.dir / "out.h5"
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
        before = file_fingerprint(target)
        result = sweep("run", job_path, timeout=120)
        self.assertEqual(result.returncode, 4, result.describe())
        self.assertEqual(file_fingerprint(target), before)


if __name__ == "__main__":
    harness.main()
