#!/usr/bin/env python3
"""Proves the NDIF peer with nnsight's own client.

    /work/main/.venv/bin/python tests/peer/test_peer.py [-v]

Builds the tiny models (into a temporary dir, or into $NDIF_PEER_MODELS, which is then kept
and reused), starts ndif_peer.py on free ports, and drives it with nnsight 0.8.1's
RemoteBackend (non-blocking: submit, then poll by calling the backend again) on meta
skeletons built offline from the models' hub cache. Every remote result is compared bit for
bit with the same trace run locally on a real model loaded from the deployment dir in the
serving dtype. Also covers ingress refusals, the 404 before a job's first stored status,
ERROR tracebacks, expired and bad result URLs, every injected fault kind, /status and /env.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOKENIZERS = Path(os.environ.get("NDIF_PEER_TOKENIZERS", REPO / "data" / "tokenizers"))
PYTHON = sys.executable

_KEEP_MODELS = bool(os.environ.get("NDIF_PEER_MODELS"))
MODELS = Path(os.environ["NDIF_PEER_MODELS"]) if _KEEP_MODELS else Path(
    tempfile.mkdtemp(prefix="ndif-peer-models-"))

# The client side resolves "ndif-sweep-test/<name>" from this hub cache only. Set before
# huggingface_hub is imported: it reads these once, at import.
os.environ["HF_HUB_CACHE"] = str(MODELS / "hf-cache")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.pop("HF_HOME", None)
os.environ.pop("NDIF_API_KEY", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(HERE))
import ndif_peer  # noqa: E402  (before nnsight: see the anyio note in ndif_peer.py)

import httpx  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # as the peer (--threads 1): same kernels, same reduction order

from nnsight.intervention.backends.remote import RemoteBackend, RemoteError  # noqa: E402
from nnsight.modeling import huggingface as nnsight_hf  # noqa: E402
from nnsight.modeling.transformers import TransformersModel  # noqa: E402
from nnsight.schema.config import CONFIG  # noqa: E402

CONFIG.API.APIKEY = None
CONFIG.APP.REMOTE_LOGGING = False
CONFIG.APP.DEBUG = False  # nnsight turns it on for a `-v` on the command line

LLAMA = "ndif-sweep-test/tiny-llama"
GPT2 = "ndif-sweep-test/tiny-gpt2"
ARCH = {LLAMA: "llama", GPT2: "gpt2"}
SUMMARY = {}


def setUpModule():
    proc = subprocess.run(
        [PYTHON, str(HERE / "make_tiny_models.py"), "--out", str(MODELS),
         "--tokenizers", str(TOKENIZERS)],
        capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"make_tiny_models failed:\n{proc.stderr[-3000:]}")
    SUMMARY.update(json.loads(proc.stdout))
    # nnsight asks the Hub for a repo's canonical id when minting a key; offline, say it here.
    for repo_id in (LLAMA, GPT2):
        nnsight_hf._ID_CACHE[repo_id] = repo_id


def tearDownModule():
    if not _KEEP_MODELS:
        shutil.rmtree(MODELS, ignore_errors=True)


def model_dir(repo_id):
    return SUMMARY["models"][repo_id.split("/")[1]]["dir"]


class PeerProcess:
    """ndif_peer.py in a subprocess on a free port; stopped by its own pid."""

    def __init__(self, repo_ids, *extra):
        self.tmp = tempfile.mkdtemp(prefix="ndif-peer-run-")
        port_file = os.path.join(self.tmp, "port")
        cmd = [PYTHON, str(HERE / "ndif_peer.py"), "--port", "0", "--port-file", port_file]
        for repo_id in repo_ids:
            cmd += ["--deployment", f"{repo_id}={model_dir(repo_id)}"]
        cmd += [str(x) for x in extra]
        self.stderr = open(os.path.join(self.tmp, "stderr"), "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        line = [None]
        reader = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()))
        reader.start()
        reader.join(180)
        if not line[0] or not line[0].startswith("listening on http://"):
            self.stop()
            self.stderr.seek(0)
            raise RuntimeError(f"peer did not start: {line[0]!r}\n{self.stderr.read()[-3000:]}")
        self.url = line[0].split()[-1]
        port = int(Path(port_file).read_text())
        assert self.url.endswith(f":{port}"), (self.url, port)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.stderr.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def get(self, path, **kw):
        return httpx.get(self.url + path, timeout=30, **kw)


def wait_result(backend, timeout=60.0):
    """Polls a submitted non-blocking job (by calling the backend again) until its result."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = backend()
        if result is not None:
            return result
        time.sleep(0.02)
    raise AssertionError(f"job {backend.job_id} did not finish; last status {backend.status}")


def wait_stored(peer, job_id, statuses=("COMPLETED", "ERROR"), timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = peer.get(f"/response/{job_id}")
        if r.status_code == 200 and r.json()["status"] in statuses:
            return r.json()
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {statuses}")


def backend_for(peer, meta, model_key=None, **kw):
    return RemoteBackend(model_key or meta.to_model_key(), host=peer.url, blocking=False,
                         env=meta._remoteable_get_env(), **kw)


# --- the traces (each runs unchanged locally and remotely) ----------------------------------

def probes_trace(model, arch, prompt, backend=None):
    """Several layers' outputs and self-attention's output[0], each saved on its own."""
    kw = {} if backend is None else {"backend": backend}
    with model.trace(prompt, **kw):
        stack = model.model.layers if arch == "llama" else model.transformer.h
        attn = stack[1].self_attn if arch == "llama" else stack[1].attn
        a1 = attn.output[0].save()
        h1 = stack[1].output.save()
        h2 = stack[2].output.save()
        h3 = stack[3].output[:, -1].save()
    return None if backend is not None else {"a1": a1, "h1": h1, "h2": h2, "h3": h3}


def sweep_trace(model, arch, ids, mask, positions, layer_ids, backend=None):
    """The ndif-sweep request: per-row positions sliced from every probe and layer, stacked,
    made 16-bit and saved once."""
    kw = {} if backend is None else {"backend": backend}
    with model.trace({"input_ids": ids, "attention_mask": mask}, **kw):
        stack = model.model.layers if arch == "llama" else model.transformer.h
        attn = stack[layer_ids[0]].self_attn if arch == "llama" else stack[layer_ids[0]].attn
        a = attn.output[0]
        probes = [torch.stack([a[r, positions[r]] for r in range(len(positions))])]
        for i in layer_ids:
            h = stack[i].output
            probes.append(torch.stack([h[r, positions[r]] for r in range(len(positions))]))
        out = torch.stack(probes, dim=1).to(torch.float16).save()
    return None if backend is not None else {"out": out}


def failing_trace(model, arch, backend=None):
    kw = {} if backend is None else {"backend": backend}
    with model.trace("one two three", **kw):
        stack = model.model.layers if arch == "llama" else model.transformer.h
        bad = stack[0].output[7].save()  # batch of 1: raises IndexError on the server
    return None


def padded_batch(tokenizer, texts):
    """Left-pads with the pad (= eos) token, as NDIF's batcher would; returns the ids, the
    mask, and each row's last two real positions shifted by its padding offset."""
    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = [[width - len(r) + len(r) - 2, width - 1] for r in rows]
    return ids, mask, positions


# --- tests -------------------------------------------------------------------------------------

class ExactResults(unittest.TestCase):
    """Remote results equal local ones bit for bit, for both models."""

    @classmethod
    def setUpClass(cls):
        cls.peer = PeerProcess([LLAMA, GPT2], "--dtype", "bfloat16")
        cls.meta = {r: TransformersModel(r, task="text-generation") for r in (LLAMA, GPT2)}
        cls.real = {r: TransformersModel(model_dir(r), task="text-generation", dispatch=True,
                                         dtype=torch.bfloat16) for r in (LLAMA, GPT2)}
        for model in cls.real.values():
            model._module.requires_grad_(False)

    @classmethod
    def tearDownClass(cls):
        cls.peer.stop()

    def assertSame(self, remote, local):
        self.assertEqual(sorted(remote), sorted(local))
        for name in local:
            self.assertEqual(remote[name].dtype, local[name].dtype, name)
            self.assertEqual(remote[name].shape, local[name].shape, name)
            self.assertTrue(torch.equal(remote[name], local[name]), f"{name} differs")

    def test_meta_skeleton_offline_and_model_key(self):
        status = self.peer.get("/status").json()
        keys = {d["repo_id"]: d["model_key"] for d in status["deployments"].values()}
        for repo_id, meta in self.meta.items():
            self.assertEqual({str(p.device) for p in meta._module.parameters()}, {"meta"})
            self.assertEqual(meta.to_model_key(), keys[repo_id])
            self.assertEqual(meta.to_model_key(), ndif_peer.model_key_for(repo_id))
            self.assertEqual(sorted(meta._remoteable_persistent_objects()),
                             sorted(self.real[repo_id]._remoteable_persistent_objects()))

    def test_probes_both_models(self):
        for repo_id in (LLAMA, GPT2):
            with self.subTest(repo_id):
                arch = ARCH[repo_id]
                prompt = "The quick brown fox jumps over the lazy dog"
                backend = backend_for(self.peer, self.meta[repo_id])
                probes_trace(self.meta[repo_id], arch, prompt, backend=backend)
                remote = wait_result(backend)
                local = probes_trace(self.real[repo_id], arch, prompt)
                self.assertEqual(remote["h1"].dtype, torch.bfloat16)
                self.assertSame(remote, local)

    def test_padded_sweep_batch_both_models(self):
        texts = ["Hi there", "A somewhat longer prompt than the first one", "Three words here"]
        for repo_id in (LLAMA, GPT2):
            with self.subTest(repo_id):
                arch = ARCH[repo_id]
                ids, mask, positions = padded_batch(self.meta[repo_id].tokenizer, texts)
                self.assertTrue(bool((mask == 0).any()))
                backend = backend_for(self.peer, self.meta[repo_id])
                sweep_trace(self.meta[repo_id], arch, ids, mask, positions, [0, 2, 3],
                            backend=backend)
                remote = wait_result(backend)
                local = sweep_trace(self.real[repo_id], arch, ids, mask, positions, [0, 2, 3])
                self.assertEqual(tuple(remote["out"].shape), (3, 4, 2, 64))
                self.assertEqual(remote["out"].dtype, torch.float16)
                self.assertSame(remote, local)

    def test_block_error_is_a_traceback(self):
        backend = backend_for(self.peer, self.meta[LLAMA])
        failing_trace(self.meta[LLAMA], "llama", backend=backend)
        with self.assertRaises(RemoteError) as caught:
            wait_result(backend)
        text = str(caught.exception)
        self.assertTrue(text.startswith("Traceback (most recent call last):"), text[:200])
        self.assertIn("IndexError", text)
        self.assertIn(Path(__file__).name, text)
        self.assertIn("bad = stack[0].output[7].save()", text)
        self.assertNotIn("ndif_peer.py", text)
        self.assertNotIn("site-packages/nnsight/", text)

    def test_unknown_model_and_architecture_mismatch(self):
        key = ndif_peer.model_key_for("ndif-sweep-test/not-deployed")
        backend = backend_for(self.peer, self.meta[GPT2], model_key=key)
        probes_trace(self.meta[GPT2], "gpt2", "hello", backend=backend)
        with self.assertRaises(RemoteError) as caught:
            wait_result(backend)
        self.assertEqual(str(caught.exception), ndif_peer.MSG_PROVISION_FAILED)

        # A Llama-shaped block sent to the GPT-2 deployment names modules GPT-2 lacks.
        backend = backend_for(self.peer, self.meta[LLAMA], model_key=self.meta[GPT2].to_model_key())
        probes_trace(self.meta[LLAMA], "llama", "hello", backend=backend)
        with self.assertRaises(RemoteError) as caught:
            wait_result(backend)
        text = str(caught.exception)
        self.assertTrue(text.startswith("The model architecture on this server doesn't match"),
                        text)
        self.assertIn("it has no module at 'Module:", text)

    def test_lifecycle_statuses(self):
        backend = backend_for(self.peer, self.meta[GPT2])
        probes_trace(self.meta[GPT2], "gpt2", "statuses", backend=backend)
        body = wait_stored(self.peer, backend.job_id)
        self.assertEqual(body["status"], "COMPLETED")
        self.assertEqual(body["description"], "Your job has been completed.")
        self.assertRegex(body["data"], r"^http://127\.0\.0\.1:\d+/results/[0-9a-f]{32}\?")
        self.assertEqual(set(body["meta"]), {"runtime", "max_memory_usage", "max_mem_by_gpu",
                                             "max_mem_pct_by_gpu"})
        self.assertEqual(set(body), {"id", "status", "description", "data", "meta"})
        result = wait_result(backend)
        self.assertEqual(sorted(result), ["a1", "h1", "h2", "h3"])
        stats = self.peer.get("/_peer/stats").json()
        self.assertGreaterEqual(stats["completed"], 1)
        self.assertIn(self.meta[GPT2].to_model_key(), stats["by_model"])

    def test_status_and_env_shapes(self):
        status = self.peer.get("/status").json()
        self.assertEqual(set(status), {"deployments", "cluster"})
        self.assertEqual(len(status["deployments"]), 2)
        for name, d in status["deployments"].items():
            self.assertEqual(name, f"{d['replica_id']}:ModelActor:{d['model_key']}")
            self.assertEqual(d["application_state"], "RUNNING")
            self.assertEqual(d["deployment_level"], "HOT")
            self.assertEqual(d["task"], "text-generation")
            self.assertIsNone(d["revision"])
            self.assertEqual(d["dtype"], "bfloat16")
            self.assertIsInstance(d["config"], str)
            config = json.loads(d["config"])
            self.assertEqual(config["model_type"], ARCH[d["repo_id"]])
            self.assertIsInstance(d["n_params"], int)
            self.assertEqual(d["n_params"], sum(
                p.numel() for p in self.real[d["repo_id"]]._module.parameters()))
        env = self.peer.get("/env").json()
        self.assertEqual(env["python_version"], sys.version)
        import nnsight
        import transformers
        self.assertEqual(env["packages"]["nnsight"], nnsight.__version__)
        self.assertEqual(env["packages"]["torch"], torch.__version__)
        self.assertEqual(env["packages"]["transformers"], transformers.__version__)
        self.assertEqual(self.peer.get("/ping").json(), "pong")


# Long enough for a download under a fully loaded machine (tests run two at a time on 2 cores),
# short enough to wait out.
URL_TTL_S = 5


class StrictIngress(unittest.TestCase):
    """--api-key, --min-nnsight-version, a long queue latency and a short URL lifetime."""

    KEY = str(uuid.UUID(int=0x1234))

    @classmethod
    def setUpClass(cls):
        cls.peer = PeerProcess([GPT2], "--api-key", cls.KEY, "--min-nnsight-version", "0.8.1",
                               "--env-nnsight-version", "0.8.0", "--latency-ms", "1500",
                               "--url-ttl-s", str(URL_TTL_S))
        cls.meta = TransformersModel(GPT2, task="text-generation")

    @classmethod
    def tearDownClass(cls):
        cls.peer.stop()

    def post(self, headers, data=None):
        envelope = data or json.dumps({"model_key": self.meta.to_model_key(), "session_id": "",
                                       "compress": True, "env": {}})
        base = {"nnsight-version": "0.8.1", "python-version": sys.version}
        base.update(headers)
        base = {k: v for k, v in base.items() if v is not None}
        return httpx.post(self.peer.url + "/request", data={"data": envelope},
                          files={"blob": ("request", b"\x00", "application/octet-stream")},
                          headers=base, timeout=30)

    def test_auth_statuses_and_messages(self):
        r = self.post({})
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json()["detail"], ndif_peer.MSG_MISSING_KEY)
        r = self.post({"ndif-api-key": "not-a-uuid"})
        self.assertEqual(r.status_code, 400)
        self.assertIn("Invalid API key format: 'not-a-uuid'", r.json()["detail"])
        r = self.post({"ndif-api-key": str(uuid.uuid4())})
        self.assertEqual(r.status_code, 403)
        self.assertEqual(r.json()["detail"], "Invalid API key.")
        r = self.post({"ndif-api-key": self.KEY}, data="{}")
        self.assertEqual(r.status_code, 422)
        self.assertIsInstance(r.json()["detail"], list)
        r = httpx.post(self.peer.url + "/request", headers={"ndif-api-key": self.KEY},
                       files={"blob": ("request", b"x")}, timeout=30)
        self.assertEqual(r.status_code, 422)

        # nnsight's own client surfaces the detail.
        backend = backend_for(self.peer, self.meta)
        with self.assertRaises(RemoteError) as caught:
            probes_trace(self.meta, "gpt2", "no key", backend=backend)
        self.assertIn("Missing or invalid API key", str(caught.exception))

    def test_version_gate(self):
        r = self.post({"ndif-api-key": self.KEY, "nnsight-version": "0.8.0"})
        self.assertEqual(r.status_code, 400)
        self.assertIn("Client nnsight version 0.8.0 is below the minimum supported 0.8.1",
                      r.json()["detail"])
        r = self.post({"ndif-api-key": self.KEY, "nnsight-version": None})
        self.assertEqual(r.status_code, 400)
        self.assertIn("Client nnsight version was not provided", r.json()["detail"])

    def test_404_before_first_status_then_result_then_expiry(self):
        backend = backend_for(self.peer, self.meta, api_key=self.KEY)
        probes_trace(self.meta, "gpt2", "queued later", backend=backend)
        r = self.peer.get(f"/response/{backend.job_id}")
        self.assertEqual(r.status_code, 404)
        self.assertEqual(r.json(), {"detail": f"No response for request {backend.job_id}."})
        self.assertIsNone(backend())  # nnsight reads the 404 as "not yet"
        body = wait_stored(self.peer, backend.job_id, ("QUEUED", "RUNNING", "COMPLETED"))
        if body["status"] == "QUEUED":
            self.assertEqual(body["description"], "Added to Queue at position 1.")
        result = wait_result(backend)  # downloads well within the URL's lifetime
        self.assertEqual(sorted(result), ["a1", "h1", "h2", "h3"])

        # The same URL, later: expired.
        url = self.peer.get(f"/response/{backend.job_id}").json()["data"]
        r = httpx.get(url, headers={"ndif-api-key": self.KEY}, timeout=30)
        self.assertEqual(r.status_code, 400)
        self.assertEqual(r.json()["detail"], ndif_peer.MSG_KEY_ON_RESULT)
        bad = re.sub(r"signature=[0-9a-f]+", "signature=" + "0" * 64, url)
        r = httpx.get(bad, timeout=30)
        self.assertEqual(r.status_code, 403)
        self.assertIn(b"<Code>SignatureDoesNotMatch</Code>", r.content)
        time.sleep(URL_TTL_S + 1.1)
        r = httpx.get(url, timeout=30)
        self.assertEqual(r.status_code, 403)
        self.assertIn(b"<Message>Request has expired</Message>", r.content)
        self.assertEqual(r.headers["content-type"], "application/xml")

        # And through nnsight: a job polled only after its URL expired fails the download.
        backend = backend_for(self.peer, self.meta, api_key=self.KEY)
        probes_trace(self.meta, "gpt2", "collected late", backend=backend)
        wait_stored(self.peer, backend.job_id)
        time.sleep(URL_TTL_S + 1.1)
        with self.assertRaises(httpx.HTTPStatusError) as caught:
            wait_result(backend)
        self.assertEqual(caught.exception.response.status_code, 403)

    def test_env_reports_configured_nnsight(self):
        env = self.peer.get("/env").json()
        self.assertEqual(env["packages"]["nnsight"], "0.8.0")
        self.assertEqual(set(env), {"python_version", "packages"})


class Faults(unittest.TestCase):
    """--fail-rate 1: every POST draws a fault, reproducibly by its sequence number."""

    SEED = 11

    @classmethod
    def setUpClass(cls):
        cls.peer = PeerProcess([GPT2], "--fail-rate", "1", "--fail-seed", cls.SEED,
                               "--slow-s", "0.6")
        cls.meta = TransformersModel(GPT2, task="text-generation")
        cls.real = TransformersModel(model_dir(GPT2), task="text-generation", dispatch=True,
                                     dtype=torch.bfloat16)

    @classmethod
    def tearDownClass(cls):
        cls.peer.stop()

    def test_every_kind(self):
        kinds = list(ndif_peer.FAULT_KINDS)
        local = probes_trace(self.real, "gpt2", "fault injection")
        seen = {}
        seq = 0
        while len(seen) < len(kinds) and seq < 200:
            seq += 1
            kind = ndif_peer.draw_fault(1.0, kinds, self.SEED, seq)
            if kind in seen:
                # Still consumes the sequence number; a cheap POST that fails nothing else.
                backend = backend_for(self.peer, self.meta)
                try:
                    probes_trace(self.meta, "gpt2", "fault injection", backend=backend)
                    wait_result(backend)
                except Exception:
                    pass
                continue
            seen[kind] = seq
            with self.subTest(kind=kind, seq=seq):
                self.check_kind(kind, local)
        self.assertEqual(set(seen), set(kinds))
        stats = self.peer.get("/_peer/stats").json()
        self.assertEqual(sum(stats["faults"].values()), seq)

    def check_kind(self, kind, local):
        backend = backend_for(self.peer, self.meta)
        if kind in ("http500", "http503"):
            with self.assertRaises(RemoteError) as caught:
                probes_trace(self.meta, "gpt2", "fault injection", backend=backend)
            detail = (ndif_peer.MSG_INTERNAL if kind == "http500"
                      else ndif_peer.MSG_UNAVAILABLE)
            self.assertEqual(str(caught.exception), f"Failed to send request: {detail}")
            return
        probes_trace(self.meta, "gpt2", "fault injection", backend=backend)
        if kind == "error_status":
            with self.assertRaises(RemoteError) as caught:
                wait_result(backend)
            self.assertEqual(str(caught.exception), ndif_peer.MSG_CANCELLED)
        elif kind == "payload_error":
            with self.assertRaises(RemoteError) as caught:
                wait_result(backend)
            self.assertTrue(str(caught.exception).startswith(
                "Your request payload could not be read ("), str(caught.exception))
        elif kind == "expired_url":
            with self.assertRaises(httpx.HTTPStatusError) as caught:
                wait_result(backend)
            self.assertEqual(caught.exception.response.status_code, 403)
        elif kind == "truncate":
            with self.assertRaises(httpx.RemoteProtocolError):
                wait_result(backend)
            self.assertSameResult(wait_result(backend), local)  # the next download is whole
        elif kind == "slow":
            started = time.time()
            self.assertSameResult(wait_result(backend), local)
            self.assertGreaterEqual(time.time() - started, 0.5)
        elif kind == "bad_zstd":
            import zstandard
            with self.assertRaises(zstandard.ZstdError):
                wait_result(backend)
        else:
            self.fail(f"unhandled kind {kind}")

    def assertSameResult(self, remote, local):
        self.assertEqual(sorted(remote), sorted(local))
        for name in local:
            self.assertTrue(torch.equal(remote[name], local[name]), name)


if __name__ == "__main__":
    unittest.main()
