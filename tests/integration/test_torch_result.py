"""ndif-local's results are torch.save files that real torch loads, with the values the synthetic
model defines. The request is built here, from ndif-protocol's G2 format, independently of
ndif-sweep's encoder, and sent over HTTP with the standard library; the result is loaded with
torch.load (python3-torch) and compared bit for bit with tests/tools/synthetic_model.py."""

import io
import json
import subprocess
import time
import urllib.request
import zlib

import numpy as np
import torch

import harness

FUNCTIONS = {
    "module": "nnsight.intervention.protocols.intervention.InterventionProtocol",
    "getitem": "_operator.getitem",
    "stack": "torch.stack",
    "fetch_attr": "nnsight.util.fetch_attr",
    "call": "nnsight.tracing.graph.proxy.Proxy.call",
    "lock": "nnsight.tracing.protocols.lock.LockProtocol",
    "tracer": "nnsight.intervention.contexts.interleaving.InterleavingTracer",
}


class Graph:
    """Nodes and literal tensors live in the memo and are referenced by id, as nnsight 0.4 does."""

    def __init__(self):
        self.memo, self.nodes = {}, []

    def memoize(self, value):
        key = str(len(self.memo))
        self.memo[key] = value
        return {"type_name": "REFERENCE", "id": int(key)}

    def add(self, function, *args, **kwargs):
        node = {"type_name": "NODE", "target": {"type_name": "FUNCTION", "function_name": FUNCTIONS[function]},
                "args": list(args)}
        if kwargs:
            node["kwargs"] = kwargs
        ref = self.memoize(node)
        self.nodes.append(ref)
        return len(self.nodes) - 1, ref

    def body(self):
        return {"graph": {"type_name": "GRAPH", "nodes": self.nodes}, "memo": self.memo}


def tensor(values):
    return {"type_name": "TENSOR", "values": [values], "dtype": "int64"}


def request_body(prompts, positions, layers, method):
    """One invoke per prompt; per layer the padding-adjusted rows of model.layers.{l} output[0]."""
    g = Graph()
    longest = max(len(p) for p in prompts)
    per_invoke = []
    everything = {"type_name": "SLICE", "start": None, "stop": None, "step": None}
    for k, ids in enumerate(prompts):
        rows = []
        for layer in layers:
            _, out = g.add("module", f".model.layers.{layer}.output", k, 0)
            _, hidden = g.add("getitem", out, 0)
            adjusted = [p + longest - len(ids) for p in positions]
            _, picked = g.add("getitem", hidden, {"type_name": "TUPLE", "values": [
                0, {"type_name": "LIST", "values": adjusted}, everything]})
            rows.append(picked)
        _, stacked = g.add("stack", {"type_name": "LIST", "values": rows}, dim=0)
        per_invoke.append(stacked)
    _, batch = g.add("stack", {"type_name": "LIST", "values": per_invoke}, dim=0)
    _, attr = g.add("fetch_attr", batch, method)
    saved, converted = g.add("call", attr)
    g.add("lock", converted)
    inputs = [{"type_name": "TUPLE", "values": [
        {"type_name": "TUPLE", "values": [{"type_name": "DICT", "values": {
            "input_ids": g.memoize(tensor(ids)), "attention_mask": g.memoize(tensor([1] * len(ids)))}}]},
        {"type_name": "DICT", "values": {"labels": None}}]} for ids in prompts]
    g.add("tracer", {"type_name": "INTERVENTIONGRAPH", "subset": list(range(len(g.nodes)))}, None, *inputs)
    return zlib.compress(json.dumps(g.body()).encode()), saved


def http(method, url, body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as reply:
        return reply.read()


class TorchLoadsResults(harness.TempDirTestCase):
    def fetch_result(self, server, body):
        headers = {"Content-Type": "application/octet-stream", "ndif-api-key": "k", "format": "json",
                   "zlib": "True", "model_key": 'nnsight.modeling.language.LanguageModel:{"repo_id": "x/y"}',
                   "nnsight-version": "0.4.11", "sent-timestamp": str(time.time()), "callback": ""}
        job = json.loads(http("POST", f"{server.url}/request", body, headers))
        deadline = time.time() + 30
        while time.time() < deadline:
            status = json.loads(http("GET", f"{server.url}/response/{job['id']}", headers={"ndif-api-key": "k"}))
            if status["status"] in ("COMPLETED", "ERROR"):
                break
            time.sleep(0.05)
        self.assertEqual(status["status"], "COMPLETED", status)
        data = status["data"]
        if data is None:
            return http("GET", f"{server.url}/result/{job['id']}", headers={"ndif-api-key": "k"})
        url = data if isinstance(data, str) else data[0]
        return http("GET", url if url.startswith("http") else server.url + url)

    def check(self, server_args, method, target_dtype, model_dtype):
        server = self.start_server("--layers", "6", "--hidden", "16", "--seed", "3", "--model-dtype", model_dtype,
                                   *server_args)
        prompts = [[128000, 791, 8415, 7731, 389, 279], [128000, 9906], [128000, 40, 1093, 433, 13, 578, 4320, 11]]
        positions, layers = [1, 0], [0, 5, 2]
        body, saved = request_body(prompts, positions, layers, method)
        raw = self.fetch_result(server, body)
        if raw[:4] == b"\x28\xb5\x2f\xfd":
            raw = subprocess.run(["zstd", "-d", "-c"], input=raw, capture_output=True, check=True).stdout
        result = torch.load(io.BytesIO(raw))
        self.assertEqual(set(result), {"id", "result"})
        self.assertEqual(list(result["result"]), [saved])
        got = result["result"][saved]
        self.assertEqual(got.dtype, {"float16": torch.float16, "bfloat16": torch.bfloat16,
                                     "float32": torch.float32}[target_dtype])
        self.assertEqual(tuple(got.shape), (3, 3, 2, 16))
        wide = got.element_size() == 4
        got_bits = got.contiguous().view(torch.int32 if wide else torch.int16).numpy().view(np.uint32 if wide else np.uint16)
        for b, ids in enumerate(prompts):
            for li, layer in enumerate(layers):
                expect = harness.module_activations(ids, f"model.layers.{layer}", 3, 16, model_dtype, target_dtype)
                self.assertTrue(np.array_equal(harness.bit_view(expect[positions]), got_bits[b, li]),
                                f"prompt {b} layer {layer}")

    def test_g2_result_endpoint_half(self):
        self.check([], "half", "float16", "bfloat16")

    def test_presigned_url_zstd_bfloat16(self):
        self.check(["--delivery", "url", "--zstd"], "bfloat16", "bfloat16", "float32")

    def test_float_from_float16_model(self):
        self.check([], "float", "float32", "float16")


if __name__ == "__main__":
    harness.main()
