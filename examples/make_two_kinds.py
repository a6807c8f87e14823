#!/usr/bin/env python3
"""Writes a sweep with two conditions for examples/analysis.ipynb: prompts ending in digits
(meta kind "digits") and prompts ending in words (kind "words"), and a job spec for them.

    python3 examples/make_two_kinds.py [--count 400] [--endpoint local|URL] [--model REPO_ID]
    build/bin/ndif-sweep run examples/two_kinds/job.json
    NDIF_SWEEP_FILE=out/two_kinds.h5 jupyter nbconvert --to notebook --execute examples/analysis.ipynb

With the default endpoint (`local`, the bundled ndif-local) the values come from the synthetic
model, whose activations are hashes of the tokens: the two conditions are then noise against noise,
which shows how the analyses read such data (chance accuracy, cosines near 0). Aimed at a real
model (an NDIF endpoint and its model), the kinds separate.
"""

import argparse
import json
import os
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = ("the cat sat on a mat while dog ran to park with ball and tree under sky near house "
         "river bird sang song over hill").split()


def lines(count, seed=11):
    rng = random.Random(seed)
    for i in range(count):
        if i % 2 == 0:
            text = "Numbers: " + " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(3, 12)))
            yield {"prompt": text, "id": f"p{i}", "meta": {"kind": "digits"}}
        else:
            text = "Words: " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12)))
            yield {"prompt": text, "id": f"p{i}", "meta": {"kind": "words"}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--endpoint", default="local")
    parser.add_argument("--model", default="meta-llama/Llama-3.1-8B")
    parser.add_argument("--out", default=str(HERE / "two_kinds"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "prompts.jsonl", "w", encoding="utf-8") as f:
        for line in lines(args.count):
            f.write(json.dumps(line) + "\n")
    job = {
        "model": args.model,
        "endpoint": args.endpoint,
        # Paths in a job are relative to the job file.
        "tokenizer": os.path.relpath(HERE.parent / "data" / "tokenizers" / "llama3_1.json", out),
        "prompts": "prompts.jsonl",
        "positions": [-1],
        "probes": [{"name": "resid", "module": "model.layers.{layer}", "output_index": None, "layers": "0:32"}],
        "dtype": "float16",
        "output": os.path.relpath(HERE.parent / "out" / "two_kinds.h5", out),
    }
    if args.endpoint == "local":
        job["local"] = {"layers": 32, "hidden": 64, "seed": 0, "model_dtype": "bfloat16"}
        job["probes"][0]["output_index"] = 0
    (out / "job.json").write_text(json.dumps(job, indent=2) + "\n")
    print(f"wrote {out / 'prompts.jsonl'} ({args.count} prompts) and {out / 'job.json'}")


if __name__ == "__main__":
    main()
