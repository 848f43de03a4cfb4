#!/usr/bin/env node
'use strict';
// Writes a tiny random Hugging Face checkpoint (see src/testing/tinyModel.ts). Needs `tsc` to have run.
//
//   node scripts/make-tiny-model.js OUT_DIR [--arch llama|mistral|qwen2] [--dtype f32|f16|bf16]
//        [--layers N] [--hidden N] [--heads N] [--kv-heads N] [--head-dim N] [--intermediate N]
//        [--vocab-size N] [--max-positions N] [--tied] [--bias] [--rope-theta X]
//        [--rope-scaling none|llama3|linear] [--rope-factor X] [--sliding-window N|none]
//        [--shards N] [--seed N] [--eos-list] [--rms-norm-eps X] [--no-bos]

const path = require('node:path');

const INT = 'int';
const NUM = 'number';
const FLAG = 'flag';
const STR = 'string';

// flag -> [option name, kind, allowed values]
const FLAGS = {
  '--arch': ['arch', STR, ['llama', 'mistral', 'qwen2']],
  '--dtype': ['dtype', STR, ['f32', 'f16', 'bf16']],
  '--layers': ['layers', INT],
  '--hidden': ['hidden', INT],
  '--heads': ['heads', INT],
  '--kv-heads': ['kvHeads', INT],
  '--head-dim': ['headDim', INT],
  '--intermediate': ['intermediate', INT],
  '--vocab-size': ['vocabSize', INT],
  '--max-positions': ['maxPositions', INT],
  '--tied': ['tied', FLAG],
  '--bias': ['bias', FLAG],
  '--rope-theta': ['ropeTheta', NUM],
  '--rope-scaling': ['ropeScaling', STR, ['none', 'llama3', 'linear']],
  '--rope-factor': ['ropeFactor', NUM],
  '--sliding-window': ['slidingWindow', 'window'],
  '--shards': ['shards', INT],
  '--seed': ['seed', INT],
  '--eos-list': ['eosList', FLAG],
  '--rms-norm-eps': ['rmsNormEps', NUM],
  '--no-bos': ['addBos', 'negflag'],
};

function usage(message) {
  if (message) process.stderr.write(`make-tiny-model: ${message}\n`);
  const flags = Object.entries(FLAGS).map(([flag, [, kind, allowed]]) => {
    if (kind === FLAG || kind === 'negflag') return `[${flag}]`;
    if (allowed) return `[${flag} ${allowed.join('|')}]`;
    if (kind === 'window') return `[${flag} N|none]`;
    return `[${flag} ${kind === INT ? 'N' : 'X'}]`;
  });
  process.stderr.write(`usage: node scripts/make-tiny-model.js OUT_DIR ${flags.join(' ')}\n`);
  process.exit(message ? 2 : 0);
}

function parseArgs(argv) {
  let outDir = null;
  const options = {};
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    if (arg === '-h' || arg === '--help') usage();
    if (!arg.startsWith('--')) {
      if (outDir !== null) usage(`unexpected argument ${arg}`);
      outDir = arg;
      continue;
    }
    let inline = null;
    const eq = arg.indexOf('=');
    if (eq >= 0) {
      inline = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    const spec = FLAGS[arg];
    if (!spec) usage(`unknown flag ${arg}`);
    const [name, kind, allowed] = spec;
    if (kind === FLAG || kind === 'negflag') {
      if (inline !== null) usage(`${arg} takes no value`);
      options[name] = kind === FLAG;
      continue;
    }
    const value = inline !== null ? inline : argv[++i];
    if (value === undefined) usage(`${arg} needs a value`);
    if (kind === STR) {
      if (allowed && !allowed.includes(value)) usage(`${arg} must be one of ${allowed.join(', ')}`);
      options[name] = value;
    } else if (kind === 'window') {
      if (value === 'none' || value === 'null') options[name] = null;
      else if (/^\d+$/.test(value)) options[name] = Number(value);
      else usage(`${arg} must be a positive integer or none`);
    } else {
      const n = Number(value);
      if (value.trim() === '' || !Number.isFinite(n) || (kind === INT && !Number.isInteger(n))) {
        usage(`${arg} must be ${kind === INT ? 'an integer' : 'a number'}`);
      }
      options[name] = n;
    }
  }
  if (outDir === null) usage('missing OUT_DIR');
  return { outDir, options };
}

function main() {
  const { outDir, options } = parseArgs(process.argv.slice(2));
  let writeTinyModel;
  try {
    ({ writeTinyModel } = require(path.join(__dirname, '..', 'dist', 'testing', 'index.js')));
  } catch (err) {
    process.stderr.write(
      `make-tiny-model: cannot load dist/testing/index.js (run \`npx tsc\` first): ${err.message}\n`,
    );
    process.exit(1);
  }
  let info;
  try {
    info = writeTinyModel(outDir, options);
  } catch (err) {
    process.stderr.write(`make-tiny-model: ${err.message}\n`);
    process.exit(1);
  }
  const c = info.config;
  process.stdout.write(
    `wrote ${info.dir}: ${c.architectures[0]} ${c.torch_dtype}, ${c.num_hidden_layers} layers, hidden ${c.hidden_size}, ` +
      `${c.num_attention_heads}/${c.num_key_value_heads} heads x ${c.head_dim}, vocab ${c.vocab_size}\n`,
  );
  for (const f of info.files) process.stdout.write(`  ${path.relative(process.cwd(), f) || f}\n`);
}

main();
