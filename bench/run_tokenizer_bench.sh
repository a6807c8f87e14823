#!/usr/bin/env bash
# Tokenizer benchmark, ours against the reference (Hugging Face `tokenizers` through npm), on the
# corpus of the differential test and every tokenizer file that scripts/fetch-tokenizers.sh fetched.
#   usage: bench/run_tokenizer_bench.sh [BUILD_DIR] [STRINGS] [REPEAT]
#          (defaults: build, 20000 strings, best of 3 passes)
# Builds the tokenizer_bench target in BUILD_DIR (Release-like flags come from the project's
# default RelWithDebInfo), runs both sides file by file, and prints a Markdown table; then the
# split scanners against PCRE2 on the same corpus (split_bench).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build}
strings=${2:-20000}
repeat=${3:-3}
tokenizers=$repo/data/tokenizers
[ -d "$tokenizers/node_modules/tokenizers" ] || { echo "run scripts/fetch-tokenizers.sh first" >&2; exit 1; }

cmake -S "$repo" -B "$build" -DNDIF_BENCH=ON >/dev/null
cmake --build "$build" --target tokenizer_bench split_bench -j2 >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 "$repo/tests/tools/gen_corpus.py" "$strings" >"$work/corpus.jsonl"
for name in llama3_1 qwen3 gemma3 mistral gpt2 llama2 o200k; do
  file=$tokenizers/$name.json
  [ -f "$file" ] || continue
  "$build/bin/tokenizer_bench" "$work/corpus.jsonl" --repeat "$repeat" "$file" >>"$work/ours.jsonl"
  node "$repo/bench/reference_bench.js" "$work/corpus.jsonl" --repeat "$repeat" "$file" >>"$work/reference.jsonl"
  TOKENIZERS_PARALLELISM=false node "$repo/bench/reference_bench.js" "$work/corpus.jsonl" --repeat "$repeat" "$file" \
    >>"$work/reference_one_thread.jsonl"
done

python3 - "$work" <<'PY'
import json, os, sys
work = sys.argv[1]
def read(name):
    with open(os.path.join(work, name)) as f:
        return {os.path.basename(r["file"])[:-5]: r for r in map(json.loads, f)}
ours, ref, ref1 = read("ours.jsonl"), read("reference.jsonl"), read("reference_one_thread.jsonl")
first = next(iter(ours.values()))
print(f"{first['strings']} strings; tokens per second in thousands (k tok/s); load in seconds; "
      f"all cores = {first['threads']} threads")
print()
print("| file | tokens | load ours | load ref | 1 thread first pass ours | ref | 1 thread ours | ref (encodeBatch) "
      "| ref encode() loop | all cores ours | ref (encodeBatch) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, o in ours.items():
    r, r1 = ref[name], ref1[name]
    assert o["tokens"] == r["tokens"], f"{name}: token counts differ ({o['tokens']} vs {r['tokens']})"
    k = lambda v: f"{v / 1000:,.0f}"
    print(f"| {name} | {o['tokens']:,} | {o['load_s']:.2f} | {r['load_s']:.2f} | {k(o['first_pass_tokens_per_s'])} "
          f"| {k(r1['first_pass_tokens_per_s'])} | {k(o['single_thread_tokens_per_s'])} "
          f"| {k(r1['encode_batch_one_thread_tokens_per_s'])} | {k(r['encode_loop_tokens_per_s'])} "
          f"| {k(o['all_threads_tokens_per_s'])} | {k(r['encode_batch_all_cores_tokens_per_s'])} |")
PY
echo
"$build/bin/split_bench" "$work/corpus.jsonl" --repeat "$repeat"
