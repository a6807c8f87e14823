"""The `ndif_sweep` Python package on files written by real ndif-sweep runs against ndif-local.

Every value the reader returns is compared bit for bit with the synthetic model (tests/tools/
synthetic_model.py, through the harness's Expectation), and every analysis with a direct numpy
computation on those expected values: the reader and the analysis are checked together against a
source that does not go through the file. Files: float16 (complete, and partial after kill -9 of a
real run), bfloat16, and a live file read while a run writes it.
"""

import sys
import time

import numpy as np

import harness
from harness import Expectation, layer_list

sys.path.insert(0, str(harness.SOURCE / "python"))
import ndif_sweep  # noqa: E402
from ndif_sweep import analyze  # noqa: E402

PROBES = [
    {"name": "resid", "module": "model.layers.{layer}", "output_index": 0, "layers": "0:4"},
    {"name": "mlp", "module": "model.layers.{layer}.mlp", "output_index": None, "layers": [1, 3]},
]
KINDS = ("code", "prose")


def two_kind_lines(count, seed=0):
    """Prompt lines with meta {"kind": code|prose, "n": i}, alternating kinds."""
    texts = harness.varied_prompts(count, seed=seed)
    return [{"prompt": t, "id": f"p{i}", "meta": {"kind": KINDS[i % 2], "n": i}} for i, t in enumerate(texts)]


def make(directory, dtype="float16", count=48, max_prompts=4, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    lines = two_kind_lines(count)
    job_path, job = harness.make_job(directory, lines, probes=PROBES, dtype=dtype, positions=[-1, 0, 1],
                                     batch={"target_mb": 32, "max_prompts": max_prompts,
                                            "max_tokens": 32768, "sort_by_length": True}, **fields)
    return job_path, job, lines


def expected_layer(expect, probe, layer, rows):
    """(n, P, H) expected values of one layer, as the reader returns them (bfloat16 as float32)."""
    li = layer_list(probe["layers"]).index(layer)
    data = np.stack([expect.rows(probe, r)[li] for r in rows]) if len(rows) else None
    if expect.job.get("dtype") == "bfloat16":
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data


def bits(a):
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


class Files:
    """Files written once for all tests (runs take seconds each)."""
    made = False

    @classmethod
    def make_all(cls, root):
        if cls.made:
            return
        cls.root = root
        job, cls.job, cls.lines = make(root / "f16")
        run = harness.sweep("run", job, "--progress", "none")
        assert run.returncode == 0, run.describe()
        cls.f16 = root / "f16" / "out.h5"
        cls.expect = Expectation(cls.job, cls.lines)

        job, cls.bjob, blines = make(root / "bf16", dtype="bfloat16", count=20)
        run = harness.sweep("run", job, "--progress", "none")
        assert run.returncode == 0, run.describe()
        cls.bf16 = root / "bf16" / "out.h5"
        cls.bexpect = Expectation(cls.bjob, blines)
        cls.made = True


class PackageTest(harness.TempDirTestCase):
    @classmethod
    def setUpClass(cls):
        import tempfile
        from pathlib import Path
        cls.root = Path(tempfile.mkdtemp(prefix="ndif-pkg-"))
        Files.make_all(cls.root)

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.root, True)

    # ------------------------------------------------------------ reader

    def test_reader_values_bit_for_bit(self):
        s = ndif_sweep.open_sweep(Files.f16)
        np.testing.assert_array_equal(s.rows, np.arange(48))
        self.assertEqual(s.rows.dtype, np.int64)
        self.assertEqual(s.probes, {"resid": [0, 1, 2, 3], "mlp": [1, 3]})
        self.assertEqual(s.ids, [f"p{i}" for i in range(48)])
        self.assertEqual(s.texts, Files.expect.texts)
        np.testing.assert_array_equal(s.positions, np.array(Files.expect.positions))
        self.assertEqual(s.meta("kind"), [KINDS[i % 2] for i in range(48)])
        self.assertEqual(s.meta("n"), list(range(48)))
        self.assertEqual(s.meta("absent"), [None] * 48)
        for probe in PROBES:
            for layer in layer_list(probe["layers"]):
                got = s.acts(probe["name"], layer)
                self.assertEqual(got.dtype, np.float16)
                self.assertEqual(got.shape, (48, 3, 32))
                want = expected_layer(Files.expect, probe, layer, range(48))
                np.testing.assert_array_equal(bits(got), bits(want))
        # A subset in any order, with a repeat.
        rows = [17, 3, 40, 3]
        np.testing.assert_array_equal(bits(s.acts("mlp", 3, rows)),
                                      bits(expected_layer(Files.expect, PROBES[1], 3, rows)))

    def test_bfloat16_as_float32(self):
        s = ndif_sweep.open_sweep(Files.bf16)
        self.assertEqual(s.dtype("resid"), "bfloat16")
        got = s.acts("resid", 2)
        self.assertEqual(got.dtype, np.float32)
        want = expected_layer(Files.bexpect, PROBES[0], 2, range(20))
        np.testing.assert_array_equal(bits(got), bits(want))
        # The low 16 bits of a bfloat16 widened to float32 are zero.
        self.assertTrue(np.all(bits(got) & 0xFFFF == 0))

    def test_iteration_in_chunks(self):
        s = ndif_sweep.open_sweep(Files.f16)
        seen = []
        for rows, data in s.iter_acts("resid", None, chunk_rows=7):
            self.assertLessEqual(rows.size, 7)
            self.assertEqual(data.shape, (rows.size, 4, 3, 32))
            want = np.stack([Files.expect.rows(PROBES[0], r) for r in rows])
            np.testing.assert_array_equal(bits(data), bits(want))
            seen.extend(rows.tolist())
        self.assertEqual(seen, list(range(48)))

    def test_errors_name_the_problem(self):
        s = ndif_sweep.open_sweep(Files.f16)
        with self.assertRaisesRegex(ndif_sweep.SweepError, "no probe 'attn'"):
            s.acts("attn", 0)
        with self.assertRaisesRegex(ndif_sweep.SweepError, r"no layer 2; its layers are \[1, 3\]"):
            s.acts("mlp", 2)
        with self.assertRaisesRegex(ndif_sweep.SweepError, "row 48 is out of range"):
            s.acts("mlp", 1, [0, 48])
        text = self.dir / "notes.txt"
        text.write_text("not hdf5\n")
        with self.assertRaisesRegex(ndif_sweep.NotASweep, "not an HDF5 file"):
            ndif_sweep.open_sweep(text)
        import h5py
        other = self.dir / "other.h5"
        with h5py.File(other, "w") as f:
            f.attrs["format"] = "something-else/2"
            f["x"] = np.arange(3)
        with self.assertRaisesRegex(ndif_sweep.NotASweep, "not an ndif-sweep file .*something-else/2"):
            ndif_sweep.open_sweep(other)
        with self.assertRaisesRegex(ndif_sweep.SweepError, "no such file"):
            ndif_sweep.open_sweep(self.dir / "missing.h5")

    # ------------------------------------------------------------ analysis against numpy

    def expected_all(self, probe, rows):
        return np.stack([Files.expect.rows(probe, r) for r in rows]).astype(np.float64)  # (n, L, P, H)

    def test_layer_norms_and_nonfinite(self):
        s = ndif_sweep.open_sweep(Files.f16)
        for probe in PROBES:
            x = self.expected_all(probe, range(48))
            want = np.linalg.norm(x, axis=-1).mean(axis=(0, 2))
            np.testing.assert_allclose(analyze.layer_norms(s, probe["name"], chunk_rows=5), want, rtol=1e-12)
            np.testing.assert_array_equal(analyze.nonfinite_counts(s, probe["name"]), np.zeros(len(want)))

    def test_groups_cosine_and_mean_difference(self):
        s = ndif_sweep.open_sweep(Files.f16)
        rows = np.arange(48)
        code, prose = rows[rows % 2 == 0], rows[rows % 2 == 1]
        g = analyze.groups(s, "kind")
        self.assertEqual(g.values, ("code", "prose"))
        np.testing.assert_array_equal(g.rows[0], code)
        for position in (0, 2):
            x = self.expected_all(PROBES[0], rows)[:, :, position, :]
            ma, mb = x[code].mean(axis=0), x[prose].mean(axis=0)
            cos = (ma * mb).sum(-1) / np.linalg.norm(ma, axis=-1) / np.linalg.norm(mb, axis=-1)
            np.testing.assert_allclose(analyze.group_cosine(s, "resid", "kind", position=position, chunk_rows=9),
                                       cos, rtol=1e-10)
            md = analyze.mean_difference(s, "resid", "kind", "code", "prose", position=position)
            d = (ma - mb) / np.linalg.norm(ma - mb, axis=-1, keepdims=True)
            np.testing.assert_allclose(md.directions, d, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(md.projections, np.einsum("nlh,lh->nl", x, d), rtol=1e-10, atol=1e-12)
        with self.assertRaisesRegex(ndif_sweep.SweepError, "has 48 values"):
            analyze.groups(s, "n")
        with self.assertRaisesRegex(ndif_sweep.SweepError, "no valid row has kind = 'poetry'"):
            analyze.groups(s, "kind", "code", "poetry")

    def test_pca(self):
        s = ndif_sweep.open_sweep(Files.f16)
        x = self.expected_all(PROBES[0], range(48))[:, 2, 0, :]
        centred = x - x.mean(axis=0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        pca = analyze.pca2(s, "resid", 2, position=0, chunk_rows=10)
        for k in range(2):
            c = vt[k] * np.sign(vt[k][np.argmax(np.abs(vt[k]))])
            np.testing.assert_allclose(pca.components[k], c, atol=1e-8)
            np.testing.assert_allclose(pca.coords[:, k], centred @ c, atol=1e-8)
        np.testing.assert_allclose(pca.explained, sv[:2] ** 2 / (sv ** 2).sum(), rtol=1e-8)
        np.testing.assert_array_equal(pca.rows, np.arange(48))

    def test_linear_probe_ridge_and_logistic(self):
        s = ndif_sweep.open_sweep(Files.f16)
        rows = np.arange(48)
        labels = rows % 2
        train, test = analyze.split_rows(np.arange(48), 0.25, 0)
        self.assertEqual(sorted(np.concatenate([train, test]).tolist()), list(range(48)))
        self.assertEqual(test.size, 12)
        result = analyze.linear_probe(s, "resid", "kind", kind="ridge", alpha=2.0)
        self.assertEqual(result.classes, ["code", "prose"])
        for li, layer in enumerate([0, 1, 2, 3]):
            x = self.expected_all(PROBES[0], rows)[:, li, 0, :]
            mu, sd = x[train].mean(0), x[train].std(0)
            xtr, xte = (x[train] - mu) / sd, (x[test] - mu) / sd
            # Ridge by least squares on the augmented system (bias penalised too, as documented).
            a = np.hstack([xtr, np.ones((train.size, 1))])
            y = np.eye(2)[labels[train]]
            w = np.linalg.lstsq(np.vstack([a, np.sqrt(2.0) * np.eye(a.shape[1])]),
                                np.vstack([y, np.zeros((a.shape[1], 2))]), rcond=None)[0]
            predicted = np.argmax(np.hstack([xte, np.ones((test.size, 1))]) @ w, axis=1)
            self.assertAlmostEqual(result.accuracy[li], float((predicted == labels[test]).mean()), places=12)
        logistic = analyze.linear_probe(s, "resid", "kind", kind="logistic")
        self.assertEqual(logistic.accuracy.shape, (4,))
        self.assertTrue(np.all((logistic.accuracy >= 0) & (logistic.accuracy <= 1)))
        # On separable data the logistic probe is perfect: a direct check of the fit.
        rng = np.random.default_rng(1)
        xs = rng.normal(size=(60, 5))
        ys = (xs[:, 0] > 0).astype(int)
        w = analyze.logistic_fit(xs, ys, 2, 1e-4, steps=2000)
        self.assertEqual(float((np.argmax(np.hstack([xs, np.ones((60, 1))]) @ w, axis=1) == ys).mean()), 1.0)

    # ------------------------------------------------------------ partial and live files

    def test_partial_file_after_kill_equals_complete_restricted(self):
        server = self.start_server("--layers", "4", "--hidden", "32", "--latency-ms", "150", "--workers", "1")
        job, _, _ = make(self.dir / "partial", max_prompts=2)
        proc = self.start_sweep("run", job, "--endpoint", server.url, "--max-inflight", 1, "--progress", "none")
        out = self.dir / "partial" / "out.h5"
        self.kill_after_batches(proc, out, 6)
        part = ndif_sweep.open_sweep(out)
        full = ndif_sweep.open_sweep(Files.f16)
        rows = part.rows
        self.assertGreater(rows.size, 0)
        self.assertLess(rows.size, 48, "the run was killed before the end")
        self.assertFalse(part.complete)
        for probe in ("resid", "mlp"):
            np.testing.assert_array_equal(bits(part.acts(probe, 3)), bits(full.acts(probe, 3, rows)))
            np.testing.assert_allclose(analyze.layer_norms(part, probe),
                                       analyze.layer_norms(full, probe, rows=rows), rtol=0, atol=0)
        invalid = int(np.setdiff1d(np.arange(48), rows)[0])
        with self.assertRaisesRegex(ndif_sweep.SweepError, f"row {invalid} is not valid yet"):
            part.acts("resid", 0, [int(rows[0]), invalid])
        self.assertEqual(part.meta("kind"), full.meta("kind", rows))
        self.assertEqual(sorted(set(part.meta("kind"))), list(KINDS), "both kinds among the valid rows")
        np.testing.assert_allclose(analyze.group_cosine(part, "resid", "kind"), self._cosine_on(full, rows),
                                   rtol=1e-12)

    def _cosine_on(self, full, rows):
        kinds = np.array(full.meta("kind", rows))
        ma = analyze.group_means(full, "resid", rows[kinds == "code"])
        mb = analyze.group_means(full, "resid", rows[kinds == "prose"])
        return (ma * mb).sum(-1) / np.linalg.norm(ma, axis=-1) / np.linalg.norm(mb, axis=-1)

    def test_live_file_while_a_run_writes_it(self):
        server = self.start_server("--layers", "4", "--hidden", "32", "--latency-ms", "100", "--workers", "1")
        job, _, _ = make(self.dir / "live", max_prompts=2)
        proc = self.start_sweep("run", job, "--endpoint", server.url, "--max-inflight", 1, "--progress", "none")
        out = self.dir / "live" / "out.h5"
        while not out.exists() and proc.poll() is None:
            time.sleep(0.05)
        s = None
        counts = []
        while proc.poll() is None:
            try:
                s = s or ndif_sweep.open_sweep(out)
                rows = s.rows
                got = s.acts("resid", 1, rows)
            except (ndif_sweep.SweepError, OSError):
                time.sleep(0.05)  # the file is created under another name and renamed; HDF5 locks
                continue
            counts.append(rows.size)
            if rows.size:
                np.testing.assert_array_equal(bits(got), bits(expected_layer(Files.expect, PROBES[0], 1, rows)))
            time.sleep(0.05)
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(counts, sorted(counts), "valid rows only grow")
        self.assertGreater(len(set(counts)), 2, f"the reader saw the file grow: {counts}")
        self.assertEqual(ndif_sweep.open_sweep(out).rows.size, 48)

    # ------------------------------------------------------------ plots and report

    def report(self, *args, python=sys.executable, timeout=300):
        return harness.sweep("report", *args, "--python", python, timeout=timeout)

    def test_report_command(self):
        to = self.dir / "report"
        result = self.report(Files.f16, "--by", "kind", "--to", to)
        self.assertEqual(result.returncode, 0, result.describe())
        expected = [f"{p}_{k}.png" for p in ("resid", "mlp") for k in ("norms", "cosine", "separation", "probe")]
        expected += ["resid_pca_layer2.png", "mlp_pca_layer3.png"]
        import matplotlib.image as mpimg
        for name in expected:
            path = to / name
            self.assertTrue(path.exists(), name)
            image = mpimg.imread(path)
            self.assertGreater(float(image[..., :3].std()), 0.01, f"{name} is blank")
        page = (to / "index.html").read_text()
        self.assertEqual(page.count("data:image/png;base64,"), len(expected))
        for needle in ("batches done</th><td>12 / 12</td>", "valid rows</th><td>48</td>",
                       "kind = &#x27;code&#x27;: 24 rows"):
            self.assertTrue(needle in page, f"{needle!r} is not in index.html")
        self.assertFalse("Partial file" in page)
        # Bad input: exit 2 naming the field; another format: exit 4; nothing else written.
        bad = self.report(Files.f16, "--by", "n", "--to", self.dir / "bad")
        self.assertEqual(bad.returncode, 2, bad.describe())
        self.assertIn("meta field 'n' has 48 values", bad.stderr)
        self.assertFalse((self.dir / "bad").exists())
        notes = self.dir / "notes.txt"
        notes.write_text("hello\n")
        other = self.report(notes, "--by", "kind", "--to", self.dir / "bad2")
        self.assertEqual(other.returncode, 4, other.describe())
        self.assertIn("not an HDF5 file", other.stderr)
        self.assertFalse((self.dir / "bad2").exists())
        missing = self.report(Files.f16, "--by", "kind", "--to", self.dir / "x", python="/nonexistent/python3")
        self.assertEqual(missing.returncode, 2)
        self.assertIn("/nonexistent/python3", missing.stderr)


if __name__ == "__main__":
    harness.main()
