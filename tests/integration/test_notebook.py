"""examples/analysis.ipynb executed (nbclient, Debian's python3 with numpy, h5py and matplotlib,
no nnsight) on sweeps of a real model: the tiny Llama-style model of the NDIF peer
(tests/peer/ndif_peer.py, nnsight's own server path), with prompts of two kinds that differ in
their tokens (digits and words), so that the plots show a difference, not noise. Once on a
partial file made by killing a real run with SIGKILL, once on the complete file. Every expected
PNG must be written and not blank; the stored values are the model's (checked as in
test_nnsight_peer), and a linear probe tells the kinds apart.

Runs with the project's test environment (.venv), like test_nnsight_peer."""

import json
import os
import subprocess
import sys

import numpy as np

import harness
import realmodel as rm
from test_nnsight_peer import PeerTestCase

sys.path.insert(0, str(harness.SOURCE / "python"))
import ndif_sweep  # noqa: E402
from ndif_sweep import analyze  # noqa: E402

NOTEBOOK_PYTHON = "/usr/bin/python3"
PROBES = [
    {"name": "resid", "module": "model.layers.{layer}", "output_index": None, "layers": "0:4"},
    {"name": "mlp", "module": "model.layers.{layer}.mlp", "output_index": None, "layers": [1, 2]},
]
sys.path.insert(0, str(harness.SOURCE / "examples"))
from make_two_kinds import lines as two_kind_lines  # noqa: E402  (the example's own prompts)


def two_kinds(count):
    """Prompts that end in a digit (kind digits) or in a word (kind words), alternating."""
    return list(two_kind_lines(count))


EXPECTED = [f"{p}_{k}.png" for p in ("resid", "mlp") for k in ("norms", "cosine", "separation", "probe")]
EXPECTED += ["resid_pca_layer2.png", "mlp_pca_layer2.png"]

# Runs the notebook, then checks the PNGs with matplotlib; prints one JSON line.
RUNNER = r"""
import json, sys
import nbformat, nbclient
import matplotlib.image as mpimg
notebook, figures, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
nb = nbformat.read(notebook, as_version=4)
nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[4]}}).execute()
text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {}))
spread = {}
for name in expected:
    try:
        spread[name] = float(mpimg.imread(f"{figures}/{name}")[..., :3].std())
    except FileNotFoundError:
        spread[name] = None
print(json.dumps({"text": text, "images": images, "spread": spread}))
"""


class NotebookOnRealModel(PeerTestCase):
    peer_args = ("--latency-ms", "250")

    def execute(self, path, figures):
        env = dict(os.environ, NDIF_SWEEP_FILE=str(path), NDIF_SWEEP_FIGURES=str(figures), NDIF_SWEEP_BY="kind",
                   PYTHONPATH=str(harness.SOURCE / "python"), PYDEVD_DISABLE_FILE_VALIDATION="1")
        result = subprocess.run([NOTEBOOK_PYTHON, "-c", RUNNER, str(harness.SOURCE / "examples" / "analysis.ipynb"),
                                 str(figures), json.dumps(EXPECTED), str(harness.SOURCE / "examples")],
                                capture_output=True, text=True, env=env, timeout=600)
        self.assertEqual(result.returncode, 0, f"the notebook failed:\n{result.stderr[-4000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        for name, spread in report["spread"].items():
            self.assertIsNotNone(spread, f"{name} was not written")
            self.assertGreater(spread, 0.02, f"{name} is blank")
        self.assertEqual(report["images"], len(EXPECTED), "every figure is shown in the notebook")
        return report["text"]

    def test_notebook_on_partial_and_complete_files(self):
        lines = two_kinds(64)
        job_path, job = self.job(lines, model=rm.LLAMA, probes=PROBES, positions=[-1], dtype="float16",
                                 batch={"target_mb": 32, "max_prompts": 4, "max_tokens": 32768,
                                        "sort_by_length": True})
        out = self.dir / "out.h5"

        # Partial: a real run killed with SIGKILL after a few batches.
        proc = self.start_sweep("run", job_path, "--max-inflight", 1, "--progress", "none", env=self.env())
        self.kill_after_batches(proc, out, 5)
        partial = ndif_sweep.open_sweep(out)
        valid = partial.rows
        self.assertGreater(valid.size, 8)
        self.assertLess(valid.size, 64, "the run was killed before its end")
        self.assertGreater(self.check_exact(out, job, lines), 0)
        text = self.execute(out, self.dir / "fig-partial")
        self.assertIn(f"{valid.size} valid rows of 64; complete: False", text)

        # Complete: the same command resumes the file.
        result = self.run_sweep(job_path)
        self.assertEqual(result.returncode, 0, result.describe())
        self.assertGreater(self.check_exact(out, job, lines), 0)
        text = self.execute(out, self.dir / "fig-complete")
        self.assertIn("64 valid rows of 64; complete: True", text)

        # The plots say something: the kinds differ in their tokens, and a linear read-out of the
        # real model's activations tells them apart far above chance (0.5).
        full = ndif_sweep.open_sweep(out)
        accuracy = analyze.linear_probe(full, "resid", "kind").accuracy
        self.assertGreaterEqual(float(accuracy.max()), 0.9, f"ridge probe accuracy per layer {accuracy}")
        self.assertIn("resid held-out accuracy per layer:", text)
        cosine = analyze.group_cosine(full, "resid", "kind")
        self.assertTrue(np.all(cosine < 0.999), f"the group means differ: cosine {cosine}")


if __name__ == "__main__":
    harness.main()
