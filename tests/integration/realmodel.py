"""What a real model gives for ndif-sweep's requests, computed here independently of the code under
test: the same padded batch traced locally with nnsight (which must equal the stored values bit for
bit) and each prompt run alone through plain transformers (which must agree within a tolerance).

Needs the project's test environment (.venv: torch, nnsight, transformers); used by
test_nnsight_peer.py and bench/nnsight_deviation.py.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

SOURCE = Path(__file__).resolve().parents[2]
PEER = SOURCE / "tests" / "peer"
LLAMA = "ndif-sweep-test/tiny-llama"
GPT2 = "ndif-sweep-test/tiny-gpt2"
TOKENIZER = {LLAMA: "llama3_1", GPT2: "gpt2"}
API_KEY = "0b7c2f5e-8d1a-4c3b-9e6f-2a4d8c1b7e90"

# Every kind of output in each model: tensor-valued decoder layers (transformers 5.14), the
# attention's tuple (element 0 holds the hidden states) and the MLP's tensor.
PROBES = {
    LLAMA: [
        {"name": "resid", "module": "model.layers.{layer}", "output_index": None, "layers": "0:4"},
        {"name": "attn", "module": "model.layers.{layer}.self_attn", "output_index": 0, "layers": [3, 1]},
        {"name": "mlp", "module": "model.layers.{layer}.mlp", "output_index": None, "layers": [2]},
    ],
    GPT2: [
        {"name": "resid", "module": "transformer.h.{layer}", "output_index": None, "layers": [0, 2, 3]},
        {"name": "attn", "module": "transformer.h.{layer}.attn", "output_index": 0, "layers": [1]},
        {"name": "mlp", "module": "transformer.h.{layer}.mlp", "output_index": None, "layers": "1:4:2"},
    ],
}

TORCH_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def models_dir():
    """Where the tiny models are built (once; make_tiny_models.py skips an unchanged build)."""
    build = Path(os.environ.get("NDIF_BUILD_DIR", SOURCE / "build"))
    return Path(os.environ.get("NDIF_PEER_MODELS", build / "peer-models"))


def build_models():
    out = models_dir()
    proc = subprocess.run([sys.executable, str(PEER / "make_tiny_models.py"), "--out", str(out),
                           "--tokenizers", str(SOURCE / "data" / "tokenizers")],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"make_tiny_models.py failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def model_dir(repo_id):
    return models_dir() / repo_id.split("/")[1]


def hf_cache():
    return models_dir() / "hf-cache"


class Peer:
    """tests/peer/ndif_peer.py serving both tiny models on a free loopback port."""

    def __init__(self, *extra, repo_ids=(LLAMA, GPT2), api_key=API_KEY):
        self.tmp = Path(tempfile.mkdtemp(prefix="ndif-peer-"))
        port_file = self.tmp / "port"
        cmd = [sys.executable, str(PEER / "ndif_peer.py"), "--port", "0", "--port-file", str(port_file),
               "--api-key", api_key]
        for repo_id in repo_ids:
            cmd += ["--deployment", f"{repo_id}={model_dir(repo_id)}"]
        cmd += [str(x) for x in extra]
        self.log = open(self.tmp / "stderr", "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        line = [None]
        reader = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()))
        reader.start()
        reader.join(240)
        if not line[0] or not line[0].startswith("listening on http://"):
            self.stop()
            raise AssertionError(f"the peer did not start: {line[0]!r}\n{self.log_text()[-3000:]}")
        self.url = line[0].split()[-1]

    def log_text(self):
        self.log.flush()
        return (self.tmp / "stderr").read_text("utf-8", "replace")

    def stats(self):
        import httpx
        return httpx.get(self.url + "/_peer/stats", timeout=30).json()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


_models = {}


def real_model(repo_id, dtype=torch.bfloat16):
    """The served model (weights in the serving dtype, as the peer loads it), once per process."""
    from nnsight.modeling.transformers import TransformersModel
    key = (repo_id, dtype)
    if key not in _models:
        model = TransformersModel(str(model_dir(repo_id)), task="text-generation", dispatch=True, dtype=dtype)
        model._module.requires_grad_(False)
        _models[key] = model
    return _models[key]


def layer_list(layers):
    if isinstance(layers, str):
        parts = [int(p) for p in layers.split(":")]
        return list(range(parts[0], parts[1], parts[2] if len(parts) == 3 else 1))
    return list(layers)


def reads_of(probes):
    """(probe name, layer, module path, output_index) in result order."""
    return [(p["name"], layer, p["module"].replace("{layer}", str(layer)), p.get("output_index"))
            for p in probes for layer in layer_list(p["layers"])]


def forward_order(model, paths):
    """The order a real forward runs these modules in (forward hooks on one tiny input)."""
    module = model._module
    order = []
    handles = [module.get_submodule(path).register_forward_hook(
        lambda _m, _a, _o, path=path: order.append(path) if path not in order else None) for path in paths]
    try:
        with torch.no_grad():
            module(input_ids=torch.tensor([[1, 2, 3]]))
    finally:
        for h in handles:
            h.remove()
    return order


def padded_batch(token_rows, pad_id):
    """Left-padded input_ids, attention_mask and mask-derived position_ids of a batch."""
    seq = max(len(t) for t in token_rows)
    ids = torch.full((len(token_rows), seq), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_rows), seq), dtype=torch.long)
    for k, t in enumerate(token_rows):
        ids[k, seq - len(t):] = torch.tensor(t)
        mask[k, seq - len(t):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def traced_batch(repo_id, probes, token_rows, positions, dtype):
    """The batch traced locally with nnsight, as ndif-sweep asks the server to: the padded batch
    with position ids, every module read in forward order and sliced at the padding-shifted
    positions, converted. Returns {probe name: array (B, L_p, P, H)}."""
    model = real_model(repo_id)
    ids, mask, position_ids = padded_batch(token_rows, model.tokenizer.pad_token_id)
    seq = ids.shape[1]
    shifted = torch.tensor([[p + seq - len(t) for p in pos] for t, pos in zip(token_rows, positions)])
    rows = torch.arange(len(token_rows))[:, None]
    reads = reads_of(probes)
    envoys = {e.path: e for e in model.modules()}
    order = forward_order(model, sorted({path for _, _, path, _ in reads}))
    picked = {}
    with model.trace({"input_ids": ids, "attention_mask": mask, "position_ids": position_ids}):
        for path in order:
            out = envoys["model." + path].output
            for slot, (_, _, p, index) in enumerate(reads):
                if p == path:
                    value = out if index is None else out[index]
                    picked[slot] = value[rows, shifted].to(TORCH_DTYPE[dtype]).save()
    result = {}
    for slot, (name, _, _, _) in enumerate(reads):
        result.setdefault(name, []).append(picked[slot].detach().cpu())
    return {name: torch.stack(parts, dim=1).numpy() if dtype != "bfloat16"
            else torch.stack(parts, dim=1).view(torch.uint16).numpy() for name, parts in result.items()}


def plain_outputs(repo_id, probes, ids, attention_mask=None, position_ids=None):
    """Module outputs of plain transformers (no nnsight) for one forward, float32, by read."""
    model = real_model(repo_id)
    module = model._module
    reads = reads_of(probes)
    captured = {}
    handles = []
    for path in {p for _, _, p, _ in reads}:
        handles.append(module.get_submodule(path).register_forward_hook(
            lambda _m, _a, out, path=path: captured.__setitem__(path, out)))
    try:
        with torch.no_grad():
            kwargs = {"input_ids": ids}
            if attention_mask is not None:
                kwargs["attention_mask"] = attention_mask
            if position_ids is not None:
                kwargs["position_ids"] = position_ids
            module(**kwargs)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for slot, (name, layer, path, index) in enumerate(reads):
        value = captured[path] if index is None else captured[path][index]
        out[slot] = value.float()
    return out, reads


def alone_values(repo_id, probes, tokens, positions, dtype):
    """Each prompt run alone (unpadded, no mask) through plain transformers, converted like the
    request converts: {probe name: float32 array (L_p, P, H)}."""
    outs, reads = plain_outputs(repo_id, probes, torch.tensor([tokens]))
    result = {}
    for slot, (name, _, _, _) in enumerate(reads):
        value = outs[slot][0, positions].to(TORCH_DTYPE[dtype]).float()
        result.setdefault(name, []).append(value)
    return {name: torch.stack(parts).numpy() for name, parts in result.items()}


def padded_without_position_ids(repo_id, probes, token_rows, positions, dtype):
    """The padded batch through plain transformers *without* position ids, as a client that sends
    none gets it from a server that adds none: {probe name: float32 array (B, L_p, P, H)}."""
    model = real_model(repo_id)
    ids, mask, _ = padded_batch(token_rows, model.tokenizer.pad_token_id)
    seq = ids.shape[1]
    shifted = torch.tensor([[p + seq - len(t) for p in pos] for t, pos in zip(token_rows, positions)])
    rows = torch.arange(len(token_rows))[:, None]
    outs, reads = plain_outputs(repo_id, probes, ids, attention_mask=mask)
    result = {}
    for slot, (name, _, _, _) in enumerate(reads):
        result.setdefault(name, []).append(outs[slot][rows, shifted].to(TORCH_DTYPE[dtype]).float())
    return {name: torch.stack(parts, dim=1).numpy() for name, parts in result.items()}


def as_float32(stored, dtype):
    """Stored values (uint16 for bfloat16) as float32."""
    stored = np.asarray(stored)
    if dtype == "bfloat16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    return stored.astype(np.float32)


def hf_tokens(repo_id, texts, add_special_tokens=True):
    tokenizer = real_model(repo_id).tokenizer
    return [tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]


def file_batches(f):
    """[(batch, rows in send order)] of an output file."""
    order, start, count = f["batches/order"][()], f["batches/start"][()], f["batches/count"][()]
    return [(b, order[start[b]:start[b] + count[b]]) for b in range(len(start))]


def wait_for(predicate, timeout=60.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
