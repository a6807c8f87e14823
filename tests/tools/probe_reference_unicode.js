#!/usr/bin/env node
// Asks the reference tokenizer (the npm binding of Hugging Face's `tokenizers`, installed beside
// the tokenizer files by scripts/fetch-tokenizers.sh) how it treats every code point, for
// tests/tools/reference_unicode_version.py:
//   usage: node probe_reference_unicode.js DIR MARKS.json > probe.json
// DIR holds node_modules/tokenizers; MARKS.json lists [code point, combining class] pairs to probe.
// Output, one JSON object: for each regex class (\p{L}, \p{Lu}, ..., \s) the code points its
// pre-tokenizer regex matches; for nfc/nfd/nfkc/nfkd the code points that each normalizer
// changes, with the result; for "ordered" each probed mark and whether NFD reorders it against a
// mark of class 1 (or 7 for class 1 itself), that is whether the reference gives it its class.
'use strict';
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const [dir, marksFile] = process.argv.slice(2);
if (!dir || !marksFile) {
  process.stderr.write('usage: node probe_reference_unicode.js DIR MARKS.json\n');
  process.exit(2);
}
const tk = createRequire(path.resolve(dir, 'package.json'))('tokenizers');
const codes = [];
for (let c = 1; c < 0x110000; c++) if (c < 0xd800 || c > 0xdfff) codes.push(c);
const parts = [];
for (let i = 0; i < codes.length; i += 8192) parts.push(String.fromCodePoint(...codes.slice(i, i + 8192)));
const everything = parts.join('');

const classes = ['\\p{L}', '\\p{Lu}', '\\p{Ll}', '\\p{Lt}', '\\p{Lm}', '\\p{Lo}', '\\p{M}', '\\p{Mn}', '\\p{Mc}',
  '\\p{Me}', '\\p{N}', '\\p{Nd}', '\\p{Nl}', '\\p{No}', '\\p{P}', '\\p{S}', '\\p{Z}', '\\p{Cf}', '\\p{Co}', '\\s'];
const out = {};
for (const cls of classes) {
  const tokenizer = tk.Tokenizer.fromString(JSON.stringify({
    version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
    pre_tokenizer: { type: 'Split', pattern: { Regex: cls }, behavior: 'Removed', invert: true },
    post_processor: null, decoder: null, model: { type: 'WordLevel', vocab: { '[UNK]': 0 }, unk_token: '[UNK]' },
  }));
  out[cls] = tokenizer.getPreTokenizer().preTokenizeString(everything).map(([piece]) => piece.codePointAt(0));
}
const forms = { nfc: tk.nfcNormalizer(), nfd: tk.nfdNormalizer(), nfkc: tk.nfkcNormalizer(), nfkd: tk.nfkdNormalizer() };
for (const [name, normalizer] of Object.entries(forms)) {
  const changed = {};
  for (const c of codes) {
    const s = String.fromCodePoint(c);
    const r = normalizer.normalizeString(s);
    if (r !== s) changed[c] = Array.from(r).map((x) => x.codePointAt(0));
  }
  out[name] = changed;
}
const nfd = forms.nfd;
out.ordered = {};
for (const [mark, ccc] of JSON.parse(fs.readFileSync(marksFile, 'utf8'))) {
  const probe = ccc > 1 ? [0x61, mark, 0x334] : [0x61, 0x93c, mark];
  const second = Array.from(nfd.normalizeString(String.fromCodePoint(...probe)))[1].codePointAt(0);
  out.ordered[mark] = ccc > 1 ? second === 0x334 : second === mark;
}
process.stdout.write(JSON.stringify(out));
