"""Block influence (ShortGPT): how much each layer changes the residual stream, for choosing
which layers a static policy skips (a training-free baseline).

    python3 train/block_influence.py --model MODEL_DIR --data DIR [--windows 32] [--seq 256]

BI_l = 1 - mean over tokens of cos(h_l, h_{l+1}), where h_l is the residual stream entering
layer l, measured on windows of DIR/train.bin (calibration data, not the held-out text).
Prints JSON: the per-layer BI and the layers in increasing order of BI (skip the first k).
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F

from common import eval_windows, load_tokens
from hf import read_config, read_model_tensors
from llama import Config, Llama


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True)
    ap.add_argument('--data', required=True)
    ap.add_argument('--windows', type=int, default=32)
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = Config(read_config(a.model))
    model = Llama(cfg)
    model.load_hf(read_model_tensors(a.model), strict=False)
    model.eval()
    x, _ = eval_windows(load_tokens(os.path.join(a.data, 'train.bin')), min(a.seq, cfg.max_pos), a.windows)
    sums = torch.zeros(cfg.layers, dtype=torch.float64)
    n = 0
    with torch.no_grad():
        for i in range(0, len(x), 8):
            _, aux = model(x[i:i + 8], collect_hidden=True)
            hs = aux['hidden']
            for l in range(cfg.layers):
                sums[l] += F.cosine_similarity(hs[l].double(), hs[l + 1].double(), dim=-1).sum()
            n += x[i:i + 8].numel()
    bi = (1 - sums / n).tolist()
    order = sorted(range(cfg.layers), key=lambda l: bi[l])
    print(json.dumps({'model': os.path.basename(os.path.abspath(a.model)), 'tokens': n, 'block_influence': [round(v, 6) for v in bi],
                      'skip_order': order}, indent=2))


if __name__ == '__main__':
    main()
