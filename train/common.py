"""Shared pieces of the training scripts: token data, batches, held-out loss, the LR schedule."""
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F


def load_tokens(path):
    """A .bin file from train/encode.js: uint16 ids, or uint32 when its .bin.json sidecar says so."""
    dtype = np.uint16
    meta = path + '.json'
    if os.path.exists(meta):
        with open(meta) as f:
            dtype = {'uint16': np.uint16, 'uint32': np.uint32}[json.load(f)['dtype']]
    return torch.from_numpy(np.fromfile(path, dtype=dtype).astype(np.int64))


def batches(tokens, seq, batch, gen):
    """Random windows of seq + 1 tokens, forever."""
    n = len(tokens) - seq - 1
    while True:
        starts = torch.randint(0, n, (batch,), generator=gen)
        w = torch.stack([tokens[s:s + seq + 1] for s in starts.tolist()])
        yield w[:, :-1], w[:, 1:]


def eval_windows(tokens, seq, count):
    """count evenly spaced, non-overlapping windows: the same ones on every call."""
    step = max(seq + 1, (len(tokens) - seq - 1) // count)
    starts = list(range(0, len(tokens) - seq - 1, step))[:count]
    w = torch.stack([tokens[s:s + seq + 1] for s in starts])
    return w[:, :-1], w[:, 1:]


@torch.no_grad()
def heldout_loss(model, windows, mode='none', batch=8):
    """Mean next-token cross-entropy (nats) and the fraction of routed layer passes that ran."""
    model.eval()
    x, y = windows
    total, n, ran, routed = 0.0, 0, 0.0, 0
    for i in range(0, len(x), batch):
        logits, aux = model(x[i:i + batch], mode=mode)
        total += F.cross_entropy(logits.flatten(0, 1), y[i:i + batch].flatten(), reduction='sum').item()
        n += y[i:i + batch].numel()
        for r in aux['run'].values():
            ran += r.sum().item()
            routed += r.numel()
    model.train()
    return total / n, (ran / routed if routed else 1.0)


def cosine_lr(step, total, peak, warmup, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def schedule(batch_iter, opt, peak_lr, warmup, minutes, max_steps=0, on_plan=None):
    """Yields (step, x, y) with opt's LR set for the step: a cosine schedule over max_steps, or
    over the number of steps that fit in `minutes` (planned from the first steps' speed)."""
    clock = Clock(minutes)
    total = max_steps or 10 ** 9
    for step, (x, y) in enumerate(batch_iter):
        if step == clock.probe and not max_steps:
            total = clock.plan(step)
            if on_plan:
                on_plan(total)
        if step >= total:
            return
        lr = cosine_lr(step, total, peak_lr, warmup=min(warmup, max(1, total // 10)))
        for g in opt.param_groups:
            g['lr'] = lr
        yield step, total, lr, x, y


class Clock:
    """Plans the number of steps that fit in a time budget from the first steps' speed."""

    def __init__(self, minutes, probe_steps=5):
        self.budget = minutes * 60
        self.probe = probe_steps
        self.t0 = time.time()

    def plan(self, step):
        el = time.time() - self.t0
        return max(step + 1, int(self.budget / (el / step)))
