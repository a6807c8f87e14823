#!/usr/bin/env node
// Reference encoder for the tokenizer's differential tests: Hugging Face's Rust `tokenizers`
// through its npm binding, loaded from the node_modules that scripts/fetch-tokenizers.sh puts
// beside the tokenizer file.
//   usage: node encode_reference.js TOKENIZER.json [--special] [--offsets] < strings.jsonl
//   input: one JSON string per line.  output, one line per input line: the ids as a JSON array,
//   or with --offsets {"ids": [...], "offsets": [[start, end], ...]} in Unicode code points.
//   --special applies the post-processor (BOS etc.), as add_special_tokens=True does.
'use strict';
const path = require('path');
const readline = require('readline');
const { createRequire } = require('module');

const [file, ...flags] = process.argv.slice(2);
const unknown = flags.filter((flag) => flag !== '--special' && flag !== '--offsets');
if (!file || unknown.length > 0) {
  process.stderr.write('usage: encode_reference.js TOKENIZER.json [--special] [--offsets] < strings.jsonl\n');
  process.exit(2);
}
const requireBeside = createRequire(path.resolve(path.dirname(file), 'package.json'));
const { Tokenizer } = requireBeside('tokenizers');
const tokenizer = Tokenizer.fromFile(file);
const addSpecialTokens = flags.includes('--special');
const withOffsets = flags.includes('--offsets');

const texts = [];
let lineNumber = 0;
readline.createInterface({ input: process.stdin, crlfDelay: Infinity })
  .on('line', (line) => {
    lineNumber += 1;
    const text = JSON.parse(line);
    if (typeof text !== 'string') {
      process.stderr.write(`stdin:${lineNumber}: expected a JSON string\n`);
      process.exit(2);
    }
    texts.push(text);
  })
  .on('close', async () => {
    const chunk = 2048;
    for (let first = 0; first < texts.length; first += chunk) {
      const encodings = await tokenizer.encodeBatch(texts.slice(first, first + chunk), { addSpecialTokens });
      const lines = encodings.map((encoding) => JSON.stringify(
        withOffsets ? { ids: encoding.getIds(), offsets: encoding.getOffsets() } : encoding.getIds()));
      process.stdout.write(lines.join('\n') + '\n');
    }
  });
