"""Checks that depthgate computes what the training code computes: the same logits and, with
router add-ons, the same per-token routing decisions, on random token ids.

    python3 train/check_parity.py MODEL_DIR [--addon FILE --policy flexidepth|skiplayer] [--tokens 64]

Runs the PyTorch model of train/llama.py (f32 arithmetic on the stored weights) and
`node dist/cli.js logits` on the same ids. Exits 1 when the largest logit difference exceeds
1e-3 of the logit range or a routing decision differs (a router weight within 1e-4 of the
threshold may flip either way and is reported, not failed).
"""
import argparse
import json
import os
import subprocess
import sys

import torch

from hf import read_config, read_model_tensors, read_safetensors
from llama import Config, Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(model_dir, addon, policy):
    model = Llama(Config(read_config(model_dir)))
    tensors = read_model_tensors(model_dir)
    if addon:
        extra = read_safetensors(addon)
        layers = sorted({int(k.split('.')[2]) for k in extra})
        if policy == 'flexidepth':
            # The widths are the file's: a checkpoint may use another reduction factor than 16.
            i = layers[0]
            model.add_flexidepth(layers, extra[f'model.layers.{i}.router.router_enc.weight'].shape[0],
                                 extra[f'model.layers.{i}.router_proj.gate_proj.weight'].shape[0])
        else:
            model.add_skiplayer(layers)
        tensors.update(extra)
    model.load_hf(tensors)
    return model.eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('model')
    ap.add_argument('--addon')
    ap.add_argument('--policy', default='none', choices=['none', 'flexidepth', 'skiplayer'])
    ap.add_argument('--tokens', type=int, default=64)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    model = build(a.model, a.addon, a.policy)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, model.cfg.vocab, (1, a.tokens), generator=g)
    with torch.no_grad():
        logits, aux = model(ids, mode=a.policy)
    cmd = ['node', os.path.join(ROOT, 'dist', 'cli.js'), 'logits', a.model, '--tokens', ','.join(map(str, ids[0].tolist())), '--json']
    # The policy is always named: a checkpoint with routers in its own weights defaults to flexidepth.
    cmd += ['--policy', a.policy]
    if a.addon:
        cmd += ['--addon', a.addon]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    eng = torch.tensor(out['logits'])
    ref = logits[0]
    rel = ((eng - ref).abs().max() / (ref.max() - ref.min())).item()
    agree = (eng.argmax(-1) == ref.argmax(-1)).float().mean().item()
    report = {'model': a.model, 'addon': a.addon, 'policy': a.policy, 'tokens': a.tokens,
              'max_logit_diff_over_range': rel, 'argmax_agreement': agree}
    bad = rel > 1e-3
    if aux['run']:
        ex = torch.tensor(out['executed'])
        flips, near = 0, 0
        for l, run in aux['run'].items():
            diff = ex[:, l] != run[0].round().to(ex.dtype)
            w = aux['weights'][l][0]
            close = (w - 0.5).abs() < 1e-4 if a.policy == 'flexidepth' else torch.zeros_like(diff)
            flips += int((diff & ~close).sum())
            near += int((diff & close).sum())
        ran = float(torch.stack(list(aux['run'].values())).float().mean())
        report.update({'routing_mismatches': flips, 'near_threshold_flips': near, 'routed_fraction_run': ran})
        bad = bad or flips > 0
    print(json.dumps(report, indent=2))
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
