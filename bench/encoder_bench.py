#!/usr/bin/env python3
"""Encoder benchmark: start-up time and memory of the nnsight encoder process, and milliseconds per
encode for batches of 8, 64 and 256 prompts, with a 32-layer (Llama-3.1-8B) and an 80-layer
(Llama-3.1-70B) model config, through the same socket protocol the ranks use.

    .venv/bin/python bench/encoder_bench.py [--tokens 300] [--repeats 5]

Needs data/tokenizers/llama3_1.json (scripts/fetch-tokenizers.sh). Prints one table; figures are
kept in docs/performance.md. The probe reads the residual stream of every layer at 2 positions.
"""

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SOURCE / "python"))
from ndif_sweep import wire  # noqa: E402

CONFIGS = {
    "Llama-3.1-8B (32 layers, 4096)": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                                       "num_attention_heads": 32, "num_key_value_heads": 8},
    "Llama-3.1-70B (80 layers, 8192)": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
                                        "num_attention_heads": 64, "num_key_value_heads": 8},
}
COMMON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "bos_token_id": 128000,
          "eos_token_id": 128001, "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
          "rope_theta": 500000.0, "tie_word_embeddings": False,
          "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 8192, "rope_type": "llama3"}}


def model_dir(root, config):
    d = Path(root)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({**COMMON, **config}))
    (d / "tokenizer.json").write_bytes((SOURCE / "data" / "tokenizers" / "llama3_1.json").read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}))
    return d


def call(stream, message, attachment=b""):
    wire.write_message(stream, message, attachment)
    reply = wire.read_message(stream)
    if reply is None or not reply[0].get("ok"):
        raise SystemExit(f"encoder failed: {reply[0] if reply else 'closed'}")
    return reply


def vm_hwm_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"nnsight encoder, {sys.executable}; prompts of {args.tokens} tokens, 2 positions, every layer")
    print(f"{'model config':34} {'start s':>8} {'RSS MB':>7} " + " ".join(f"{f'{b} prompts ms':>15}" for b in (8, 64, 256))
          + f" {'blob kB (256)':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in CONFIGS.items():
            d = model_dir(Path(tmp) / name.split()[0], config)
            sock = Path(tmp) / f"{name.split()[0]}.sock"
            env = {**os.environ, "PYTHONPATH": str(SOURCE / "python"), "HF_HUB_OFFLINE": "1"}
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-m", "ndif_sweep.encoder", "--socket", str(sock)],
                                    stdin=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            while not sock.exists():
                time.sleep(0.01)
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(str(sock))
            stream = conn.makefile("rwb")
            call(stream, {"op": "hello"})
            probes = [{"name": "resid", "module": "model.layers.{layer}", "output_index": None,
                       "layers": list(range(config["num_hidden_layers"]))}]
            call(stream, {"op": "open", "config": {"model": name, "model_dir": str(d), "revision": None,
                                                   "model_key": "bench", "probes": probes, "dtype": "float16"}})
            start_s = time.monotonic() - started
            times, blob_kb = [], 0.0
            for batch in (8, 64, 256):
                seq = args.tokens
                # Token ids as varied as text's (a fixed pseudo-random draw), so the blob's size is real.
                rng = __import__("random").Random(batch)
                ids = struct.pack(f"<{batch * seq}i", *(rng.randrange(128000) for _ in range(batch * seq)))
                mask = bytes([1]) * (batch * seq)
                positions = struct.pack(f"<{batch * 2}i", *([seq - 1, 1] * batch))
                samples = []
                for _ in range(args.repeats):
                    t = time.monotonic()
                    _, blob = call(stream, {"op": "encode", "batch": batch, "seq": seq, "positions": 2,
                                            "position_ids": True}, ids + mask + positions)
                    samples.append((time.monotonic() - t) * 1000)
                times.append(statistics.median(samples))
                blob_kb = len(blob) / 1e3
            rss = vm_hwm_mb(proc.pid)
            print(f"{name:34} {start_s:8.2f} {rss:7.0f} " + " ".join(f"{t:15.1f}" for t in times) + f" {blob_kb:13.1f}")
            stream.close()
            conn.close()
            proc.stdin.close()
            proc.wait(10)


if __name__ == "__main__":
    main()
