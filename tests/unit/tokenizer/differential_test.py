#!/usr/bin/env python3
"""Differential test: the C++ tokenizer against Hugging Face's reference encoder.

usage: differential_test.py NDIF_SWEEP REPO_ROOT [--count N] [--names a,b]

Ours is `NDIF_SWEEP tokenize`, the command users run.

For every fetched tokenizer (scripts/fetch-tokenizers.sh puts them in data/tokenizers/), encodes a
generated corpus with and without special tokens and requires identical ids and offsets on every
string. Exits 77 (skipped) when the tokenizer files or node are missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

SKIP = 77
NAMES = ["llama3_1", "qwen3", "gpt2", "gemma3", "mistral", "llama2", "o200k"]


def run(command, stdin_bytes):
    result = subprocess.run(command, input=stdin_bytes, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode(errors='replace')[:2000]}")
    return result.stdout.decode().splitlines()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ndif_sweep")
    parser.add_argument("root")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--names", default=",".join(NAMES))
    args = parser.parse_args()
    directory = os.path.join(args.root, "data", "tokenizers")
    reference = os.path.join(args.root, "tests", "tools", "encode_reference.js")
    names = [n for n in args.names.split(",") if os.path.exists(os.path.join(directory, n + ".json"))]
    if not names or shutil.which("node") is None or not os.path.isdir(os.path.join(directory, "node_modules", "tokenizers")):
        print(f"skipped: run scripts/fetch-tokenizers.sh first (no tokenizer files or reference in {directory})")
        return SKIP
    corpus = subprocess.run([sys.executable, os.path.join(args.root, "tests", "tools", "gen_corpus.py"), str(args.count)],
                            stdout=subprocess.PIPE, check=True).stdout
    texts = [json.loads(line) for line in corpus.decode().splitlines()]
    failures = 0
    for name in names:
        path = os.path.join(directory, name + ".json")
        for special in (True, False):
            flags = ["--offsets"] + (["--special"] if special else [])
            expected = run(["node", reference, path] + flags, corpus)
            actual = run([args.ndif_sweep, "tokenize", path] + flags, corpus)
            if len(expected) != len(texts) or len(actual) != len(texts):
                print(f"{name}: line counts differ: corpus {len(texts)}, reference {len(expected)}, ours {len(actual)}")
                failures += 1
                continue
            ids_differ = offsets_differ = 0
            for text, want_line, got_line in zip(texts, expected, actual):
                want, got = json.loads(want_line), json.loads(got_line)
                if want["ids"] != got["ids"]:
                    ids_differ += 1
                    if ids_differ <= 3:
                        print(f"{name} special={special}: ids differ for {json.dumps(text)}\n  reference {want['ids']}\n  ours      {got['ids']}")
                elif want["offsets"] != got["offsets"]:
                    offsets_differ += 1
                    if offsets_differ <= 3:
                        print(f"{name} special={special}: offsets differ for {json.dumps(text)}\n  reference {want['offsets']}\n  ours      {got['offsets']}")
            print(f"{name} special={special}: {len(texts)} strings, ids differ on {ids_differ}, offsets differ on {offsets_differ}")
            failures += ids_differ + offsets_differ
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
