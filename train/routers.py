"""Trains FlexiDepth or SkipLayer routers on a frozen Hugging Face Llama-family model.

    node train/encode.js MODEL_DIR train.txt train.bin        # and the same for heldout.bin
    python3 train/routers.py flexidepth --model MODEL_DIR --data DIR --out flexidepth.safetensors \
        [--layers 6-11] [--penalty 1e-3] [--minutes 8]
    python3 train/routers.py skiplayer  --model MODEL_DIR --data DIR --out skiplayer.safetensors \
        [--layers 6-11] [--density 0.5] [--balance 1.0]

DIR holds train.bin and heldout.bin. The base weights stay frozen; only the new tensors train.
The output is an add-on safetensors file in the key format depthgate loads (for FlexiDepth, the
official release's: model.layers.{i}.router.router_enc.weight, .router_norm.weight,
.router_dec.weight, .router_head.weight, router_proj.gate_proj/down_proj/up_proj.weight; for
SkipLayer, model.layers.{i}.skip_router.weight [2, hidden] with logits [skip, run]). Pass it to
depthgate with `addons: [file]` / `--addon file`.

FlexiDepth (the released recipe, see train/llama.py for the forward pass): router width
hidden/16, adapter width intermediate/16, routed layers default to the second half of the stack.
Loss = LM cross-entropy + penalty * mean over tokens of (sum over routed layers of w)^2, where w
is the router's sigmoid weight. The squared sum is the form recalled from the paper and marked
UNCONFIRMED in our research notes; we use it as documented here.

SkipLayer: Linear(hidden, 2) per routed layer, straight-through Gumbel-softmax (tau 1) in
training, argmax at inference. Loss = cross-entropy + balance * sum over routed layers of
(fraction of tokens that ran the layer - density)^2.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

from common import batches, eval_windows, heldout_loss, load_tokens, schedule
from hf import read_config, read_model_tensors, write_safetensors
from llama import Config, Llama


def parse_layers(spec, n):
    if spec is None:
        return list(range(n // 2, n))
    out = []
    for part in spec.split(','):
        if '-' in part:
            a, b = part.split('-')
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    if any(l < 0 or l >= n for l in out):
        raise SystemExit(f'--layers {spec}: the model has layers 0..{n - 1}')
    return sorted(set(out))


@torch.no_grad()
def init_run_leaning(model, kind, layers, tokens, seed):
    """Starts the routers so that most tokens run every layer: the model begins at full-depth
    quality and the penalty teaches it where to skip. (Neither router format has a bias, so the
    lean comes from the direction of the mean layer input, which most tokens share.) A router
    that starts by skipping everything gets almost no signal to turn layers back on."""
    x, _ = next(batches(tokens, min(128, model.cfg.max_pos), 8, torch.Generator().manual_seed(seed)))
    _, aux = model(x, collect_hidden=True)
    for l in layers:
        L = model.layers[l]
        xin = L.input_layernorm(aux['hidden'][l]).flatten(0, 1)
        m = xin.mean(0)
        u = m / m.norm()
        proj = (xin @ u).mean()  # typical alignment of a token with the mean direction
        if kind == 'flexidepth':
            R = L.router
            R.router_enc.weight[0] = u * (4.0 / proj)
            v = torch.randn(model.cfg.hidden, generator=torch.Generator().manual_seed(seed + l))
            v /= v.norm()
            R.router_dec.weight[:, 0] = v
            R.router_head.weight[0] = v * 2.5  # logit ~ 2.5 * tanh(z_0): w ~ 0.9 for aligned tokens
        else:
            L.skip_router.weight[1] = u * (2.0 / proj)
            L.skip_router.weight[0] = -u * (2.0 / proj)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('kind', choices=['flexidepth', 'skiplayer'])
    ap.add_argument('--model', required=True)
    ap.add_argument('--data', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--layers', help='routed layers, e.g. 6-11 or 4,6,8 (default: the second half)')
    ap.add_argument('--penalty', type=float, default=1e-3, help='FlexiDepth skip penalty')
    ap.add_argument('--density', type=float, default=0.5, help='SkipLayer target fraction of tokens that run a layer')
    ap.add_argument('--balance', type=float, default=1.0, help='SkipLayer weight of the density loss')
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--minutes', type=float, default=8)
    ap.add_argument('--max-steps', type=int, default=0)
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--log-every', type=int, default=25)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    cfg = Config(read_config(a.model))
    model = Llama(cfg)
    base = read_model_tensors(a.model)
    dtype = next(iter(base.values())).dtype
    model.load_hf(base, strict=False)
    del base
    for p in model.parameters():
        p.requires_grad_(False)
    layers = parse_layers(a.layers, cfg.layers)
    if a.kind == 'flexidepth':
        model.add_flexidepth(layers)
    else:
        model.add_skiplayer(layers)
    train = load_tokens(os.path.join(a.data, 'train.bin'))
    init_run_leaning(model, a.kind, layers, train, a.seed)
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    print(f'{a.kind}: layers {layers}, {sum(p.numel() for p in trainable)} trainable parameters')

    held = eval_windows(load_tokens(os.path.join(a.data, 'heldout.bin')), a.seq, 32)
    base_loss, _ = heldout_loss(model, held, mode='none')
    print(f'held-out loss at full depth: {base_loss:.4f}')
    init_loss, init_ran = heldout_loss(model, held, mode=a.kind)
    print(f'at initialisation: held-out loss {init_loss:.4f}, routed layers run {init_ran:.2%}')
    gen = torch.Generator().manual_seed(a.seed)
    opt = torch.optim.AdamW(trainable, lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    t0 = time.time()
    step = 0
    log = []
    model.train()
    batch_iter = batches(train, min(a.seq, cfg.max_pos), a.batch, gen)
    for step, total, lr, x, y in schedule(batch_iter, opt, a.lr, 50, a.minutes, a.max_steps, lambda t: print(f'planned {t} steps')):
        logits, aux = model(x, mode=a.kind)
        ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        if a.kind == 'flexidepth':
            used = torch.stack([aux['weights'][l] for l in layers]).sum(0)  # [B, T]
            reg = a.penalty * used.pow(2).mean()
        else:
            reg = a.balance * sum((aux['run'][l].mean() - a.density) ** 2 for l in layers)
        loss = ce + reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        if step % a.log_every == 0 or step == total:
            ran = torch.stack([aux['run'][l].float().mean() for l in layers]).mean().item()
            el = time.time() - t0
            log.append({'step': step, 'ce': ce.item(), 'reg': reg.item(), 'ran': ran, 'seconds': el})
            print(f'step {step}/{total} ce {ce.item():.3f} reg {reg.item():.4f} routed layers run {ran:.2%} {el / 60:.1f} min', flush=True)

    # Evaluate what ships: the new tensors rounded to the checkpoint's dtype.
    with torch.no_grad():
        for p in trainable:
            p.copy_(p.to(dtype).float())
    hl, ran = heldout_loss(model, held, mode=a.kind)
    print(f'held-out loss {hl:.4f} (full depth {base_loss:.4f}); routed layers run {ran:.2%}')
    meta = {'kind': a.kind, 'layers': ','.join(map(str, layers)), 'steps': step, 'heldout_loss': f'{hl:.4f}',
            'heldout_loss_full_depth': f'{base_loss:.4f}', 'routed_layers_run': f'{ran:.4f}', 'base_model': os.path.basename(os.path.abspath(a.model))}
    if a.kind == 'flexidepth':
        meta['penalty'] = a.penalty
    else:
        meta.update({'density': a.density, 'balance': a.balance})
    write_safetensors(a.out, {k: v.to(dtype) for k, v in model.hf_state(a.kind).items()}, meta)
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
