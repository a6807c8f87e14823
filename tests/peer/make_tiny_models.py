#!/usr/bin/env python3
"""Builds the tiny seeded random-weight models that the NDIF peer (ndif_peer.py) serves.

    python make_tiny_models.py --out DIR --tokenizers /work/main/data/tokenizers [--verify]

Two models, each built from a fixed seed so that every run writes the same bytes:

  tiny-llama  LlamaForCausalLM, Llama-3.1 tokenizer (vocab 128256), hidden 64, 4 layers,
              4 heads / 2 kv heads, tied embeddings, weights stored in bfloat16.
  tiny-gpt2   GPT2LMHeadModel, GPT-2 tokenizer (vocab 50257), n_embd 64, 4 layers, 4 heads.

Layout written under DIR:

  DIR/<name>/               the deployment dir the peer loads: config.json,
                            generation_config.json, model.safetensors, tokenizer.json,
                            tokenizer_config.json
  DIR/hf-cache/models--ndif-sweep-test--<name>/
                            a Hugging Face hub-cache entry without weights (refs/main,
                            blobs/, snapshots/<commit>/ symlinks), so that with
                            HF_HUB_CACHE=DIR/hf-cache HF_HUB_OFFLINE=1 the client builds
                            TransformersModel("ndif-sweep-test/<name>") as a meta skeleton.

Idempotent: a stamp (DIR/.tiny-models.json) records the recipe and every file's sha256;
when it matches what is on disk nothing is rebuilt. --verify then builds both meta skeletons
offline in a subprocess and checks that their module trees equal the real models'.
A JSON summary is printed on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Bump when the recipe below changes in a way the stamp would not notice.
RECIPE_VERSION = 1
ORG = "ndif-sweep-test"
STAMP = ".tiny-models.json"
SEED = 20240601

MODELS = {
    "tiny-llama": {
        "tokenizer": "llama3_1.json",
        "bos": "<|begin_of_text|>",
        "eos": "<|end_of_text|>",
        "seed": SEED,
    },
    "tiny-gpt2": {
        "tokenizer": "gpt2.json",
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "seed": SEED + 1,
    },
}

DEPLOYMENT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
CACHE_FILES = tuple(f for f in DEPLOYMENT_FILES if f != "model.safetensors")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The id git (and so the Hub cache's blobs/ dir, for non-LFS files) gives a file."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def build_config(name: str):
    from transformers import GPT2Config, LlamaConfig

    if name == "tiny-llama":
        return LlamaConfig(
            vocab_size=128256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=128000,
            eos_token_id=128001,
            dtype="bfloat16",
        )
    if name == "tiny-gpt2":
        return GPT2Config(
            vocab_size=50257,
            n_embd=64,
            n_layer=4,
            n_head=4,
            n_positions=2048,
            bos_token_id=50256,
            eos_token_id=50256,
        )
    raise KeyError(name)


def build_model(name: str, spec: dict, tokenizers: Path, out: Path) -> None:
    """Writes one deployment dir into `out` (which must be empty)."""
    import torch
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    config = build_config(name)
    torch.manual_seed(spec["seed"])
    cls = LlamaForCausalLM if name == "tiny-llama" else GPT2LMHeadModel
    model = cls(config).eval()
    if name == "tiny-llama":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # save_pretrained writes only the weights and configs; nothing else is expected.
    extra = sorted(p.name for p in out.iterdir()) != sorted(
        ["config.json", "generation_config.json", "model.safetensors"]
    )
    if extra:
        raise RuntimeError(f"unexpected files from save_pretrained: {sorted(os.listdir(out))}")
    shutil.copyfile(tokenizers / spec["tokenizer"], out / "tokenizer.json")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": spec["bos"],
        "eos_token": spec["eos"],
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def write_cache_entry(cache: Path, repo_id: str, deployment: Path) -> str:
    """Writes the weight-less hub-cache entry of `repo_id`; returns its commit id."""
    # The commit id is derived from the files, so it is stable and changes with them.
    digest = hashlib.sha1()
    for fname in CACHE_FILES:
        digest.update(fname.encode() + b"\0" + git_blob_sha1(deployment / fname).encode() + b"\n")
    commit = digest.hexdigest()

    entry = cache / ("models--" + repo_id.replace("/", "--"))
    if entry.exists():
        shutil.rmtree(entry)
    (entry / "refs").mkdir(parents=True)
    (entry / "blobs").mkdir()
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for fname in CACHE_FILES:
        blob = git_blob_sha1(deployment / fname)
        shutil.copyfile(deployment / fname, entry / "blobs" / blob)
        os.symlink(os.path.join("..", "..", "blobs", blob), snapshot / fname)
    (entry / "refs" / "main").write_text(commit)
    return commit


def recipe(tokenizers: Path) -> dict:
    import safetensors
    import torch
    import transformers

    return {
        "recipe_version": RECIPE_VERSION,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "models": {
            name: {**spec, "tokenizer_sha256": sha256_file(tokenizers / spec["tokenizer"])}
            for name, spec in MODELS.items()
        },
    }


def current_files(out: Path) -> dict:
    files = {}
    for name in MODELS:
        for fname in DEPLOYMENT_FILES:
            path = out / name / fname
            files[f"{name}/{fname}"] = sha256_file(path) if path.is_file() else None
    return files


def cache_intact(out: Path, stamp: dict) -> bool:
    for name, commit in stamp.get("commits", {}).items():
        entry = out / "hf-cache" / f"models--{ORG}--{name}"
        ref = entry / "refs" / "main"
        if not ref.is_file() or ref.read_text() != commit:
            return False
        for fname in CACHE_FILES:
            path = entry / "snapshots" / commit / fname
            if not path.is_file() or sha256_file(path) != stamp["files"][f"{name}/{fname}"]:
                return False
    return bool(stamp.get("commits"))


def summary(out: Path, commits: dict, built: bool) -> dict:
    return {
        "built": built,
        "out": str(out),
        "hf_cache": str(out / "hf-cache"),
        "models": {
            name: {
                "repo_id": f"{ORG}/{name}",
                "dir": str(out / name),
                "commit": commits[name],
                "deployment": f"{ORG}/{name}={out / name}",
            }
            for name in MODELS
        },
    }


VERIFY_SNIPPET = r"""
import json, sys, torch
from nnsight.modeling.transformers import TransformersModel
result = {}
for repo_id, local_dir in json.loads(sys.argv[1]).items():
    meta = TransformersModel(repo_id, task="text-generation")
    real = TransformersModel(local_dir, task="text-generation", dispatch=True, dtype=torch.bfloat16)
    meta_keys = sorted(meta._remoteable_persistent_objects())
    real_keys = sorted(real._remoteable_persistent_objects())
    devices = {str(p.device) for p in meta._module.parameters()}
    result[repo_id] = {"modules": len(meta_keys), "same_tree": meta_keys == real_keys, "devices": sorted(devices)}
print(json.dumps(result))
"""


def verify(out: Path) -> dict:
    """Builds each meta skeleton offline from the hub cache, in a fresh interpreter."""
    env = dict(os.environ)
    env.update(HF_HUB_CACHE=str(out / "hf-cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HOME", None)
    pairs = {f"{ORG}/{name}": str(out / name) for name in MODELS}
    proc = subprocess.run(
        [sys.executable, "-c", VERIFY_SNIPPET, json.dumps(pairs)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"offline meta build failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for repo_id, info in result.items():
        if not info["same_tree"] or info["devices"] != ["meta"]:
            raise RuntimeError(f"offline meta skeleton of {repo_id} is wrong: {info}")
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tokenizers", required=True, type=Path,
                        help="dir holding llama3_1.json and gpt2.json")
    parser.add_argument("--verify", action="store_true",
                        help="also build both meta skeletons offline from the hub cache")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    tokenizers = args.tokenizers.resolve()
    for spec in MODELS.values():
        if not (tokenizers / spec["tokenizer"]).is_file():
            print(f"make_tiny_models: missing tokenizer {tokenizers / spec['tokenizer']}", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)

    want = recipe(tokenizers)
    stamp_path = out / STAMP
    stamp = None
    if stamp_path.is_file() and not args.force:
        try:
            stamp = json.loads(stamp_path.read_text())
        except ValueError:
            stamp = None
    up_to_date = (
        stamp is not None
        and stamp.get("recipe") == want
        and stamp.get("files") == current_files(out)
        and cache_intact(out, stamp)
    )

    if up_to_date:
        commits = stamp["commits"]
    else:
        import torch

        torch.use_deterministic_algorithms(True)
        commits = {}
        for name, spec in MODELS.items():
            with tempfile.TemporaryDirectory(dir=out, prefix=f".{name}-") as tmp:
                staging = Path(tmp) / name
                staging.mkdir()
                build_model(name, spec, tokenizers, staging)
                target = out / name
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging, target)
            commits[name] = write_cache_entry(out / "hf-cache", f"{ORG}/{name}", out / name)
        new_stamp = {"recipe": want, "files": current_files(out), "commits": commits}
        tmp_stamp = stamp_path.with_suffix(".tmp")
        tmp_stamp.write_text(json.dumps(new_stamp, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_stamp, stamp_path)

    result = summary(out, commits, built=not up_to_date)
    result["sha256"] = json.loads(stamp_path.read_text())["files"]
    if args.verify:
        result["verified"] = verify(out)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
