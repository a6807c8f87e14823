#!/usr/bin/env python3
"""Differential test: the C++ tokenizer against Hugging Face's reference encoder.

usage: differential_test.py NDIF_SWEEP REPO_ROOT [--count N] [--names a,b] [--corpora a,b] [--keep DIR]

Ours is `NDIF_SWEEP tokenize`, the command users run; the reference is the npm binding of the Rust
`tokenizers` library (tests/tools/encode_reference.js). Both run side by side on every corpus.

Tokenizers: the seven fetched files (scripts/fetch-tokenizers.sh puts them in data/tokenizers/),
and four made from them here: Qwen3 with its NFC normalizer replaced by NFD, NFKC and NFKD (no
fetched file uses those forms), and GPT-2 with a split pattern that no scanner knows, so PCRE2 runs
it with its property escapes rewritten (split_scanner.hpp).

Corpora: `generated` (tests/tools/gen_corpus.py: multilingual text, code, emoji, special-token
literals) and the Unicode corpora of tests/tools/gen_unicode_corpus.py (every code point assigned
in Unicode 16.0 alone and in contexts, runs of one class, normalization torture), which need
.venv's unicodedata2 (scripts/setup.sh). Every string must give identical ids and offsets, with and
without special tokens (the derived files, whose post-processors are their originals', with
special tokens, and on all corpora but contexts). Exits 77 (skipped) when the tokenizer files or node are missing, 1 on any
difference or when the Unicode corpora cannot be made.
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
NAMES = ["llama3_1", "qwen3", "gpt2", "gemma3", "mistral", "llama2", "o200k"]
DERIVED = ["qwen3_nfd", "qwen3_nfkc", "qwen3_nfkd", "gpt2_generic"]
CORPORA = ["generated", "alone", "contexts", "runs", "normalization"]
# A split pattern of every kind of property escape, in and outside classes, negated or not.
GENERIC_PATTERN = (r"\p{Lu}+|\p{Ll}+|[\p{Lt}\p{Lm}]+|\p{Lo}{1,2}|\pM+|\d+|[\p{Nl}\p{No}]|\p{P}+|\p{S}+"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+|[^\P{Co}]+|\w|\P{L}")


def run(command, stdin_bytes):
    result = subprocess.run(command, input=stdin_bytes, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode(errors='replace')[:2000]}")
    return result.stdout.decode().splitlines()


def derive(directory, work):
    """Writes the derived tokenizer files into `work`, beside a link to the reference's modules."""
    for entry in ("node_modules", "package.json"):
        os.symlink(os.path.abspath(os.path.join(directory, entry)), os.path.join(work, entry))
    paths = {}
    with open(os.path.join(directory, "qwen3.json")) as f:
        qwen3 = json.load(f)
    for form in ("NFD", "NFKC", "NFKD"):
        qwen3["normalizer"] = {"type": form}
        paths[f"qwen3_{form.lower()}"] = os.path.join(work, f"qwen3_{form.lower()}.json")
        with open(paths[f"qwen3_{form.lower()}"], "w") as f:
            json.dump(qwen3, f)
    with open(os.path.join(directory, "gpt2.json")) as f:
        gpt2 = json.load(f)
    gpt2["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": GENERIC_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    paths["gpt2_generic"] = os.path.join(work, "gpt2_generic.json")
    with open(paths["gpt2_generic"], "w") as f:
        json.dump(gpt2, f)
    return paths


def make_corpora(root, work, count, wanted):
    corpora = {}
    if "generated" in wanted:
        corpora["generated"] = subprocess.run(
            [sys.executable, os.path.join(root, "tests", "tools", "gen_corpus.py"), str(count)],
            stdout=subprocess.PIPE, check=True).stdout
    if any(name != "generated" for name in wanted):
        python = os.path.join(root, ".venv", "bin", "python")
        if not os.path.exists(python):
            sys.exit(f"the Unicode corpora need {python} with unicodedata2 16.0.0: run scripts/setup.sh")
        summary = json.loads(subprocess.run([python, os.path.join(root, "tests", "tools", "gen_unicode_corpus.py"), work],
                                            check=True, stdout=subprocess.PIPE).stdout)
        for name in wanted:
            if name != "generated":
                with open(os.path.join(work, name + ".jsonl"), "rb") as f:
                    corpora[name] = f.read()
        # The corpora must hold what they promise: every code point of Unicode 16.0 (292,531 are
        # assigned, private use included), so that 100% equal cannot come from an empty corpus.
        if "alone" in corpora:
            seen = {c for line in corpora["alone"].decode().splitlines() for c in json.loads(line)}
            if len(seen) != summary["assigned"] or summary["assigned"] < 290000:
                sys.exit(f"the alone corpus holds {len(seen)} code points, not the {summary['assigned']} assigned ones")
        for name, corpus in corpora.items():
            if corpus.count(b"\n") < 1000:
                sys.exit(f"the {name} corpus has fewer than 1,000 strings")
    return corpora


def compare(label, corpus, expected, actual):
    lines = corpus.decode().splitlines()
    if len(expected) != len(lines) or len(actual) != len(lines):
        print(f"{label}: line counts differ: corpus {len(lines)}, reference {len(expected)}, ours {len(actual)}")
        return 1
    ids_differ = offsets_differ = 0
    for line, want_line, got_line in zip(lines, expected, actual):
        if want_line == got_line:
            continue
        want, got = json.loads(want_line), json.loads(got_line)
        shown = line[:300]
        if want["ids"] != got["ids"]:
            ids_differ += 1
            if ids_differ <= 3:
                print(f"{label}: ids differ for {shown}\n  reference {want['ids'][:40]}\n  ours      {got['ids'][:40]}")
        elif want["offsets"] != got["offsets"]:
            offsets_differ += 1
            if offsets_differ <= 3:
                print(f"{label}: offsets differ for {shown}\n  reference {want['offsets'][:40]}\n"
                      f"  ours      {got['offsets'][:40]}")
    print(f"{label}: {len(lines)} strings, ids differ on {ids_differ}, offsets differ on {offsets_differ}")
    return ids_differ + offsets_differ


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ndif_sweep")
    parser.add_argument("root")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--names", default=",".join(NAMES + DERIVED))
    parser.add_argument("--corpora", default=",".join(CORPORA))
    parser.add_argument("--keep", help="write the corpora and derived files here instead of a temporary directory")
    args = parser.parse_args()
    directory = os.path.join(args.root, "data", "tokenizers")
    reference = os.path.join(args.root, "tests", "tools", "encode_reference.js")
    if (not all(os.path.exists(os.path.join(directory, n + ".json")) for n in NAMES) or shutil.which("node") is None
            or not os.path.isdir(os.path.join(directory, "node_modules", "tokenizers"))):
        print(f"skipped: run scripts/fetch-tokenizers.sh first (no tokenizer files or reference in {directory})")
        return SKIP
    wanted_corpora = [c for c in args.corpora.split(",") if c]
    unknown = [c for c in wanted_corpora if c not in CORPORA]
    if unknown:
        sys.exit(f"unknown corpora {unknown}; choose from {CORPORA}")
    work = args.keep or tempfile.mkdtemp(prefix="tokenizer-diff-")
    os.makedirs(work, exist_ok=True)
    try:
        derived = derive(directory, tempfile.mkdtemp(dir=work))
        paths = {n: os.path.join(directory, n + ".json") for n in NAMES} | derived
        names = [n for n in args.names.split(",") if n]
        corpora = make_corpora(args.root, work, args.count, wanted_corpora)
        failures = 0
        # The reference and ours run at once (each takes a core); the comparison follows.
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for name in names:
                for corpus_name, corpus in corpora.items():
                    if name not in NAMES and corpus_name == "contexts":
                        continue  # the largest corpus; the derived files meet every code point in the others
                    # Special tokens change only the post-processor, which the derived files share
                    # with their originals: those run with special tokens only.
                    for special in (True, False) if name in NAMES else (True,):
                        flags = ["--offsets"] + (["--special"] if special else [])
                        expected = pool.submit(run, ["node", reference, paths[name]] + flags, corpus)
                        actual = pool.submit(run, [args.ndif_sweep, "tokenize", paths[name]] + flags, corpus)
                        failures += compare(f"{name} {corpus_name} special={special}", corpus, expected.result(),
                                            actual.result())
        return 1 if failures else 0
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
