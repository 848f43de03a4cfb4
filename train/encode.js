#!/usr/bin/env node
// Encodes a text file with a model folder's tokenizer.json through depthgate's own tokenizer
// (the one generation uses), so training sees exactly the ids the engine will see.
//   node train/encode.js MODEL_OR_TOKENIZER_DIR TEXT_FILE OUT.bin
// OUT.bin holds little-endian uint16 ids (uint32 when an id is >= 65536); OUT.bin.json says which.
'use strict';
const fs = require('node:fs');
const { Tokenizer } = require('../dist/tokenizer');

const [dir, textFile, out] = process.argv.slice(2);
if (!out) {
  console.error('usage: node train/encode.js TOKENIZER_DIR TEXT_FILE OUT.bin');
  process.exit(2);
}
const tok = Tokenizer.fromDirectory(dir);
const text = fs.readFileSync(textFile, 'utf8');
// Whole lines per chunk: the pre-tokenizer never joins across a newline followed by text.
const lines = text.split(/(?<=\n)/);
const ids = [];
for (let i = 0; i < lines.length; i += 256) ids.push(...tok.encode(lines.slice(i, i + 256).join(''), false));
const back = tok.decode(ids, false);
if (back !== text) {
  console.error(`${textFile}: the tokenizer does not round-trip this text`);
  process.exit(1);
}
const max = ids.reduce((a, b) => Math.max(a, b), 0);
const arr = max < 65536 ? Uint16Array.from(ids) : Uint32Array.from(ids);
fs.writeFileSync(out, Buffer.from(arr.buffer));
// The id width, for train/common.py's load_tokens.
fs.writeFileSync(
  `${out}.json`,
  JSON.stringify({ dtype: arr.BYTES_PER_ELEMENT === 2 ? 'uint16' : 'uint32', tokens: ids.length }) + '\n',
);
console.log(
  `${textFile}: ${text.length} bytes -> ${ids.length} tokens (${(text.length / ids.length).toFixed(2)} bytes/token), ${arr.BYTES_PER_ELEMENT * 8}-bit`,
);
