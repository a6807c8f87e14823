"""Shared helpers of the integration tests: they drive the real `ndif-sweep` and `ndif-local`
binaries and check what they write against values computed here, independently of the code under
test (reference token ids from Hugging Face's own tokenizer through node, activations from the
NumPy synthetic model of docs/protocol.md).

Every test file calls `main()`, which takes `--build DIR` (the CMake build directory holding
bin/) and `--source DIR` (the repository root) off the command line before unittest sees it.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import h5py
import numpy as np

SOURCE = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("NDIF_BUILD_DIR", SOURCE / "build"))

# mpirun as root (it refuses without these), quiet and loopback only; ctest sets the same.
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_btl": "self,vader",
    "OMPI_MCA_oob_tcp_if_include": "lo",
    "OMPI_MCA_btl_tcp_if_include": "lo",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}
API_KEY = "integration-test-key"

DEFAULT_PROBES = [
    {"name": "resid", "module": "model.layers.{layer}", "output_index": 0, "layers": "0:4"},
    {"name": "mlp", "module": "model.layers.{layer}.mlp", "output_index": None, "layers": [1, 3]},
    {"name": "attn", "module": "model.layers.{layer}.self_attn", "output_index": 0, "layers": [2]},
]


def main():
    """Parse --build/--source, then run the calling module's unittest cases; the exit code is
    non-zero when a test fails."""
    global SOURCE, BUILD
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--build")
    parser.add_argument("--source")
    known, rest = parser.parse_known_args()
    if known.source:
        SOURCE = Path(known.source).resolve()
    if known.build:
        BUILD = Path(known.build).resolve()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


def sweep_bin():
    return BUILD / "bin" / "ndif-sweep"


def local_bin():
    return BUILD / "bin" / "ndif-local"


def require_binaries(testcase, *names):
    for name in names or ("ndif-sweep", "ndif-local"):
        path = BUILD / "bin" / name
        if not path.exists():
            testcase.fail(f"{path} does not exist: build it with "
                          f"`cmake --build {BUILD} --target {name}` (or pass --build DIR)")


def tokenizer_file(name):
    """Path of data/tokenizers/<name>.json; fails clearly when the fetch script has not run."""
    path = SOURCE / "data" / "tokenizers" / f"{name}.json"
    module = SOURCE / "data" / "tokenizers" / "node_modules" / "tokenizers"
    if not path.exists() or not module.exists():
        raise AssertionError(f"{path} or the reference encoder in {module.parent} is missing: "
                             "run scripts/fetch-tokenizers.sh first")
    return path


def base_env(**extra):
    env = dict(os.environ)
    env.update(MPI_ENV)
    env.setdefault("NDIF_API_KEY", API_KEY)
    env.update(extra)
    return env


class Result:
    def __init__(self, args, returncode, stdout, stderr):
        self.args, self.returncode, self.stdout, self.stderr = args, returncode, stdout, stderr

    def describe(self):
        return (f"command {' '.join(map(str, self.args))} exited {self.returncode}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}")


def run(args, timeout=180, env=None, cwd=None, input_text=None):
    """Run a command in its own process group with captured text output; on timeout the whole
    group (mpirun and its ranks, a bundled server) is killed and an AssertionError raised."""
    args = [str(a) for a in args]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or base_env(),
                            cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(input_text.encode("utf-8") if input_text is not None else None,
                                    timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(args)}\n"
                             f"{err.decode('utf-8', 'replace')[-4000:]}")
    return Result(args, proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def sweep_cmd(*args, ranks=None):
    """`ndif-sweep ARGS`, under `mpirun -np RANKS` when ranks is given."""
    command = [str(sweep_bin())] + [str(a) for a in args]
    if ranks is None:
        return command
    return ["mpirun", "-np", str(ranks)] + command


def sweep(*args, ranks=None, timeout=180, env=None, input_text=None):
    return run(sweep_cmd(*args, ranks=ranks), timeout=timeout, env=env, input_text=input_text)


class TempDirTestCase(unittest.TestCase):
    """Each test in its own temporary directory, removed afterwards; servers and process groups
    registered with `self.own(...)` are stopped in cleanup, also when the test fails."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ndif-int-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def own_process(self, proc):
        def stop():
            if proc.poll() is None:
                kill_group(proc)
                proc.wait(timeout=30)
        self.addCleanup(stop)
        return proc

    def start_sweep(self, *args, env=None):
        """`ndif-sweep ARGS` in the background, in its own process group, output discarded; stopped
        in cleanup."""
        return self.own_process(subprocess.Popen(sweep_cmd(*args), stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                 env=env or base_env(), start_new_session=True))

    def kill_after_batches(self, proc, output, batches, timeout=240):
        """SIGKILL to the whole process group of a run once `batches` batches of `output` are flagged
        (`status --json`); fails if the run ended or stalled first."""
        deadline = time.monotonic() + timeout
        while True:
            self.assertIsNone(proc.poll(), f"the run ended before {batches} batches were flagged")
            self.assertLess(time.monotonic(), deadline, f"{batches} batches were not flagged in {timeout} s")
            status = status_json(output) if Path(output).exists() else None
            if status and status["batches"]["done"] >= batches:
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def start_server(self, *args, env=None):
        server = LocalServer(self.dir, *args, env=env)
        self.addCleanup(server.stop)
        server.start()
        return server


class LocalServer:
    """An `ndif-local` on 127.0.0.1 with a port it picked itself (--port 0 --port-file)."""

    counter = 0

    def __init__(self, directory, *args, env=None):
        LocalServer.counter += 1
        self.port_file = Path(directory) / f"server{LocalServer.counter}.port"
        self.log = Path(directory) / f"server{LocalServer.counter}.log"
        self.args = [str(local_bin()), "--host", "127.0.0.1", "--port", "0",
                     "--port-file", str(self.port_file)] + [str(a) for a in args]
        self.env = env or base_env()
        self.proc = None
        self.url = None
        self.stdout_text = ""

    def start(self, timeout=30):
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text("utf-8", "replace")
            for line in text.splitlines():
                if line.startswith("listening on http://127.0.0.1:"):
                    self.url = line[len("listening on "):].strip()
                    self.stdout_text = text
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(f"ndif-local exited {self.proc.returncode}: {text}")
            time.sleep(0.05)
        raise AssertionError(f"ndif-local did not print 'listening on' within {timeout} s")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_group(self.proc)
                self.proc.wait(timeout=10)


# ---------------------------------------------------------------- reference token ids

_reference_cache = {}


def reference_ids(tokenizer, texts, special=True, offsets=False):
    """Token ids (or {"ids", "offsets"}) of each text from Hugging Face's reference encoder."""
    path = tokenizer_file(tokenizer) if isinstance(tokenizer, str) and "/" not in tokenizer else Path(tokenizer)
    key = (str(path), special, offsets, tuple(texts))
    if key not in _reference_cache:
        args = ["node", str(SOURCE / "tests" / "tools" / "encode_reference.js"), str(path)]
        if special:
            args.append("--special")
        if offsets:
            args.append("--offsets")
        stdin = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts)
        result = run(args, timeout=120, input_text=stdin)
        if result.returncode != 0:
            raise AssertionError("reference encoder failed: " + result.describe())
        lines = result.stdout.splitlines()
        assert len(lines) == len(texts), result.describe()
        _reference_cache[key] = [json.loads(line) for line in lines]
    return _reference_cache[key]


# ---------------------------------------------------------------- expected activations

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import synthetic_model  # noqa: E402  (tests/tools, NumPy only)

_activation_cache = {}


def module_activations(ids, module, seed, hidden, model_dtype, dtype):
    key = (tuple(ids), module, seed, hidden, model_dtype, dtype)
    if key not in _activation_cache:
        _activation_cache[key] = synthetic_model.activations(list(ids), module, seed=seed, hidden=hidden,
                                                             model_dtype=model_dtype, target_dtype=dtype)
    return _activation_cache[key]


def layer_list(layers):
    if isinstance(layers, str):
        parts = [int(p) for p in layers.split(":")]
        return list(range(parts[0], parts[1], parts[2] if len(parts) == 3 else 1))
    return list(layers)


def resolve_positions(positions, n_tokens):
    return [p if p >= 0 else n_tokens + p for p in positions]


def bit_view(array):
    """Unsigned integer view of stored values, so that comparisons are bit for bit."""
    array = np.asarray(array)
    if array.dtype == np.float16:
        return array.view(np.uint16)
    if array.dtype == np.float32:
        return array.view(np.uint32)
    return array


# ---------------------------------------------------------------- jobs and prompts

def write_prompts(path, lines):
    """Lines are strings (the prompt) or dicts (an object line); written as JSON Lines."""
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def make_job(directory, prompt_lines, **fields):
    """Write prompts.jsonl and job.json into directory; returns (job_path, job dict)."""
    directory = Path(directory)
    write_prompts(directory / "prompts.jsonl", prompt_lines)
    job = {
        "model": "synthetic/llama-like",
        "endpoint": "local",
        # ndif-local runs ndif-sweep's graph, also when a test reaches it by URL (--endpoint), where
        # the encoder would otherwise default to nnsight.
        "encoder": "graph",
        "local": {"layers": 4, "hidden": 32, "seed": 0, "model_dtype": "bfloat16"},
        "tokenizer": str(tokenizer_file("llama3_1")),
        "prompts": "prompts.jsonl",
        "positions": [-1, 0],
        "probes": DEFAULT_PROBES,
        "dtype": "float16",
        "batch": {"target_mb": 32, "max_prompts": 256, "max_tokens": 32768, "sort_by_length": True},
        "retry": {"max_attempts": 6, "initial_backoff_s": 0.1, "max_backoff_s": 1},
        "timeouts": {"connect_s": 10, "request_s": 60, "job_s": 120, "poll_interval_s": 0.05},
        "output": "out.h5",
    }
    job.update(fields)
    path = directory / "job.json"
    path.write_text(json.dumps(job, indent=2, ensure_ascii=False), encoding="utf-8")
    return path, job


class Expectation:
    """What a job's output file must hold, computed from the job, the prompts, the reference
    token ids and the synthetic model; `model` is the server's shape and dtype."""

    def __init__(self, job, prompt_lines, tokenizer="llama3_1", model=None):
        self.job = job
        self.model = model or job["local"]
        self.texts = [l if isinstance(l, str) else l["prompt"] for l in prompt_lines]
        self.ids = [str(l["id"]) if isinstance(l, dict) and "id" in l else str(i)
                    for i, l in enumerate(prompt_lines)]
        self.tokens = reference_ids(tokenizer, self.texts, special=job.get("add_special_tokens", True))
        default = job.get("positions", [-1])
        self.positions = []
        for line, tokens in zip(prompt_lines, self.tokens):
            given = line.get("positions", default) if isinstance(line, dict) else default
            self.positions.append(resolve_positions(given, len(tokens)))

    def rows(self, probe, row):
        """(L_p, P, H) expected stored values of one row for one probe."""
        dtype = self.job.get("dtype", "float16")
        out = []
        for layer in layer_list(probe["layers"]):
            module = probe["module"].replace("{layer}", str(layer))
            values = module_activations(self.tokens[row], module, self.model.get("seed", 0),
                                        self.model["hidden"], self.model.get("model_dtype", "bfloat16"), dtype)
            out.append(values[self.positions[row]])
        return np.stack(out)


def attr_str(value):
    """An HDF5 string attribute as str, whether h5py returns str, bytes or a NumPy scalar."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8")
    return str(value)


def strings(dataset):
    values = dataset[()]
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]


def check_file(testcase, path, expect, require_complete=True):
    """Assert the file's metadata and that every value of every valid row of every /acts dataset
    equals the synthetic model's, bit for bit. Returns (rows checked, values checked)."""
    job = expect.job
    dtype = job.get("dtype", "float16")
    stored_dtype = {"float16": np.float16, "float32": np.float32, "bfloat16": np.uint16}[dtype]
    n = len(expect.texts)
    with h5py.File(path, "r") as f:
        testcase.assertEqual(attr_str(f.attrs["format"]), "ndif-sweep/1")
        testcase.assertEqual(attr_str(f.attrs["model"]), job["model"])
        testcase.assertEqual(strings(f["prompts/text"]), expect.texts)
        testcase.assertEqual(strings(f["prompts/id"]), expect.ids)
        np.testing.assert_array_equal(f["prompts/n_tokens"][()], [len(t) for t in expect.tokens])
        np.testing.assert_array_equal(f["prompts/positions"][()], np.array(expect.positions, dtype=np.int32))
        done = f["batches/done"][()]
        batch_of_row = f["prompts/batch"][()]
        testcase.assertEqual(batch_of_row.shape, (n,))
        if require_complete:
            testcase.assertTrue(np.all(done == 1), f"/batches/done is {done.tolist()}")
        valid = np.flatnonzero(done[batch_of_row] == 1)
        checked = 0
        for probe in job["probes"]:
            ds = f["acts"][probe["name"]]
            layers = layer_list(probe["layers"])
            testcase.assertEqual(ds.shape, (n, len(layers), len(expect.positions[0]), expect.model["hidden"]))
            testcase.assertEqual(ds.dtype, np.dtype(stored_dtype), probe["name"])
            testcase.assertEqual(attr_str(ds.attrs["dtype"]), dtype)
            testcase.assertEqual(attr_str(ds.attrs["module"]), probe["module"])
            for attr in ("output_index", "layers"):
                testcase.assertIn(attr, ds.attrs)
            stored = ds[()]
            for row in valid:
                want = expect.rows(probe, row)
                got = stored[row]
                if not np.array_equal(bit_view(got), bit_view(want)):
                    bad = np.argwhere(bit_view(got) != bit_view(want))[0]
                    testcase.fail(f"/acts/{probe['name']} row {row} ({expect.texts[row][:40]!r}) differs at "
                                  f"[layer index, position, hidden] {bad.tolist()}: stored "
                                  f"{got[tuple(bad)]!r}, expected {want[tuple(bad)]!r}")
                checked += got.size
        return len(valid), checked


def snapshot(path, exclude=()):
    """Every dataset of the file as a NumPy array, keyed by its path, without the excluded paths
    (a path excludes everything under it)."""
    data = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not any(name == e or name.startswith(e + "/") for e in exclude):
            data[name] = obj[()]
    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return data


def file_fingerprint(path):
    """(mtime_ns, sha256) of a file, to prove that a command left it untouched."""
    stat = os.stat(path)
    return stat.st_mtime_ns, hashlib.sha256(Path(path).read_bytes()).hexdigest()


def descendants(pid):
    """PIDs of all processes below pid, from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def proc_read(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return b""


def mpi_rank_pids(mpirun_pid):
    """{rank: pid} of the ndif-sweep ranks started by an mpirun, read from their environment."""
    ranks = {}
    for pid in descendants(mpirun_pid):
        if proc_read(pid, "comm").strip() != b"ndif-sweep":
            continue
        for item in proc_read(pid, "environ").split(b"\0"):
            if item.startswith(b"OMPI_COMM_WORLD_RANK="):
                ranks[int(item.split(b"=", 1)[1])] = pid
    return ranks


def status_json(path):
    """`ndif-sweep status FILE --json` parsed, or None while the file cannot be read yet."""
    result = sweep("status", path, "--json", timeout=60)
    if result.returncode != 0:
        return None
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return None


def varied_prompts(count, seed=0):
    """Deterministic varied prompt texts: English, numbers, code, accents, CJK, emoji."""
    import random
    rng = random.Random(seed)
    words = ("the cat sat on mat while a dog barked at 42 birds; résumé naïve café 東京 都市 "
             "привет мир 🙂 👩‍💻 def f(x): return x**2 https://example.org/a?b=1 \t tabs  and   spaces "
             "1234567890 Hello, World! don't we'll I'm").split(" ")
    out = []
    for _ in range(count):
        n = rng.choice([1, 2, 3, 5, 8, 13, 21])
        out.append(" ".join(rng.choice(words) or "x" for _ in range(n)))
    return out


def long_text(n_words, seed=1):
    import random
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "window", "quietly", "ran", "over",
             "the", "hills", "and", "7", "into", "light", "—", "über", "naïve", "data"]
    return " ".join(rng.choice(words) for _ in range(n_words))
