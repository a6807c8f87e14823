#!/usr/bin/env node
// The reference side of the tokenizer benchmark: Hugging Face's Rust `tokenizers` through its npm
// binding (from the node_modules that scripts/fetch-tokenizers.sh puts beside the tokenizer files).
//   usage: node reference_bench.js CORPUS.jsonl [--repeat N] TOKENIZER.json...
// Prints, per tokenizer, one JSON line with the same keys as tokenizer_bench: the load time,
// encodeBatch over the whole corpus (the library spreads it over all cores, or runs it on one
// thread when TOKENIZERS_PARALLELISM=false is set), and a loop of single encode() calls awaited
// one after the other. Each figure is the best of N passes after a first encodeBatch pass, whose
// own speed (a cold cache) is reported too.
'use strict';
const fs = require('fs');
const path = require('path');
const os = require('os');
const { createRequire } = require('module');

const args = process.argv.slice(2);
let repeat = 3;
const files = [];
for (let i = 1; i < args.length; i += 1) {
  if (args[i] === '--repeat') repeat = Math.max(1, Number(args[++i]));
  else files.push(args[i]);
}
if (args.length < 2 || files.length === 0) {
  process.stderr.write('usage: reference_bench.js CORPUS.jsonl [--repeat N] TOKENIZER.json...\n');
  process.exit(2);
}
const texts = fs.readFileSync(args[0], 'utf8').split('\n').filter((line) => line.length > 0).map((line) => JSON.parse(line));
const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9;
const options = { addSpecialTokens: true };

async function best(pass) {
  let time = Infinity;
  for (let r = 0; r < repeat; r += 1) {
    const start = process.hrtime.bigint();
    await pass();
    time = Math.min(time, seconds(start));
  }
  return time;
}

(async () => {
  for (const file of files) {
    const { Tokenizer } = createRequire(path.resolve(path.dirname(file), 'package.json'))('tokenizers');
    const loadStart = process.hrtime.bigint();
    const tokenizer = Tokenizer.fromFile(file);
    const loadSeconds = seconds(loadStart);
    const firstStart = process.hrtime.bigint();
    const encodings = await tokenizer.encodeBatch(texts, options);
    const firstSeconds = seconds(firstStart);
    const tokens = encodings.reduce((sum, encoding) => sum + encoding.getIds().length, 0);
    const batchSeconds = await best(() => tokenizer.encodeBatch(texts, options));
    const loopSeconds = await best(async () => {
      for (const text of texts) await tokenizer.encode(text, null, options);
    });
    const sequential = process.env.TOKENIZERS_PARALLELISM === 'false';
    process.stdout.write(JSON.stringify({
      file,
      load_s: loadSeconds,
      strings: texts.length,
      tokens,
      first_pass_tokens_per_s: tokens / firstSeconds,
      [sequential ? 'encode_batch_one_thread_tokens_per_s' : 'encode_batch_all_cores_tokens_per_s']: tokens / batchSeconds,
      threads: sequential ? 1 : os.cpus().length,
      encode_loop_tokens_per_s: tokens / loopSeconds,
    }) + '\n');
  }
})();
