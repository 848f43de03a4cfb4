#!/usr/bin/env node
// The training implementation's held-out protocol (train/common.py eval_windows + heldout_loss),
// run through the built engine (dist/): the held-out text encoded as train/encode.js does (256
// lines at a time), then 32 evenly spaced windows of 257 tokens; each window predicts its last 256
// tokens from what precedes them in the window. Prints one JSON line per policy: the mean
// cross-entropy (nats) and the fraction of routed layer passes (layers 6-11) that ran.
//   node test/trainingHeldout.js ADDON_FILE POLICY_JSON...
// A separate process because jest's sandbox makes Math.exp about 100x slower (1 M calls: 1.8 s).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const dg = require('../dist/index.js');

function logSoftmaxAt(row, id) {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) max = Math.max(max, row[i]);
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - max);
  return row[id] - max - Math.log(s);
}

(async () => {
  const [addon, ...policies] = process.argv.slice(2);
  const d = dg.defaultModelSetup();
  const model = await dg.loadModel(d.dir, { kvCacheType: 'f32', addons: [addon] });
  const text = fs.readFileSync(path.join(__dirname, '..', 'bench', 'data', 'kjv-heldout.txt'), 'utf8');
  const lines = text.split(/(?<=\n)/);
  const ids = [];
  for (let i = 0; i < lines.length; i += 256)
    ids.push(...model.tokenizer.encode(lines.slice(i, i + 256).join(''), false));
  const seq = 256;
  const count = 32;
  const step = Math.max(seq + 1, Math.floor((ids.length - seq - 1) / count));
  for (const p of policies) {
    const policy = JSON.parse(p);
    let total = 0,
      n = 0,
      ran = 0,
      routed = 0,
      windows = 0;
    for (let s = 0; s < ids.length - seq - 1 && windows < count; s += step, windows++) {
      const w = ids.slice(s, s + seq + 1);
      const r = await model.evaluate(w.slice(0, seq), { policy });
      for (let q = 0; q < seq; q++) {
        total -= logSoftmaxAt(r.logits[q], w[q + 1]);
        n++;
        for (let l = 6; l < 12; l++) ran += r.executed[q][l];
        routed += 6;
      }
    }
    console.log(JSON.stringify({ policy, windows, tokens: n, loss: total / n, ran: ran / routed }));
  }
  await model.dispose();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
