"""Trains a small Llama-architecture base model from scratch and writes a Hugging Face folder.

    python3 train/pretrain.py --data train/data --tokenizer train/data/tok --out OUT_DIR \
        --layers 12 --hidden 256 --heads 4 --kv-heads 2 --intermediate 512 --seq 256 --minutes 60

--data holds train.bin and heldout.bin (from train/encode.js). The run length is a time
budget: the first steps are timed and the cosine schedule is set to the number of steps that
fit. OUT_DIR gets config.json, generation_config.json, model.safetensors (bf16, tied
embeddings), the tokenizer files and train_log.json.
"""
import argparse
import json
import os
import shutil
import time

import torch
import torch.nn.functional as F

from common import batches, eval_windows, heldout_loss, load_tokens, schedule
from hf import write_json, write_safetensors
from llama import Config, Llama, init_weights


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', required=True)
    ap.add_argument('--tokenizer', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--layers', type=int, default=12)
    ap.add_argument('--hidden', type=int, default=256)
    ap.add_argument('--heads', type=int, default=4)
    ap.add_argument('--kv-heads', type=int, default=2)
    ap.add_argument('--intermediate', type=int, default=512)
    ap.add_argument('--seq', type=int, default=256)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--lr', type=float, default=2e-3)
    ap.add_argument('--minutes', type=float, default=60)
    ap.add_argument('--max-steps', type=int, default=0, help='stop after this many steps (0: the time budget decides)')
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    ap.add_argument('--seed', type=int, default=42)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    with open(os.path.join(a.tokenizer, 'tokenizer.json')) as f:
        tj = json.load(f)
    vocab = len(tj['model']['vocab']) + len(tj['added_tokens'])
    eot = tj['added_tokens'][0]['id']
    cfg_json = {
        'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'torch_dtype': 'bfloat16',
        'vocab_size': vocab, 'hidden_size': a.hidden, 'intermediate_size': a.intermediate,
        'num_hidden_layers': a.layers, 'num_attention_heads': a.heads, 'num_key_value_heads': a.kv_heads,
        'head_dim': a.hidden // a.heads, 'max_position_embeddings': a.seq, 'rms_norm_eps': 1e-5,
        'rope_theta': 10000.0, 'rope_scaling': None, 'tie_word_embeddings': True, 'attention_bias': False,
        'attention_dropout': 0.0, 'mlp_bias': False, 'hidden_act': 'silu', 'initializer_range': 0.02,
        'bos_token_id': eot, 'eos_token_id': eot, 'pretraining_tp': 1, 'use_cache': True,
        'transformers_version': '4.57.0',
    }
    model = Llama(Config(cfg_json))
    init_weights(model, a.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f'{params / 1e6:.2f} M parameters, {params * 2 / 1e6:.1f} MB in bf16')

    train = load_tokens(os.path.join(a.data, 'train.bin'))
    held = eval_windows(load_tokens(os.path.join(a.data, 'heldout.bin')), a.seq, 64)
    gen = torch.Generator().manual_seed(a.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    other = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': other, 'weight_decay': 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    t0 = time.time()
    log = []
    step = 0
    plan = lambda total: print(f'planned {total} steps ({total * a.seq * a.batch / len(train):.2f} epochs)')
    for step, total, lr, x, y in schedule(batches(train, a.seq, a.batch, gen), opt, a.lr, 200, a.minutes, a.max_steps, plan):
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 100 == 0 or step == total:
            hl, _ = heldout_loss(model, held)
            el = time.time() - t0
            log.append({'step': step, 'train_loss': loss.item(), 'heldout_loss': hl, 'lr': lr, 'seconds': el})
            print(f'step {step}/{total} loss {loss.item():.3f} heldout {hl:.3f} lr {lr:.2e} {el / 60:.1f} min', flush=True)

    os.makedirs(a.out, exist_ok=True)
    write_json(os.path.join(a.out, 'config.json'), cfg_json)
    write_json(os.path.join(a.out, 'generation_config.json'),
               {'bos_token_id': eot, 'eos_token_id': eot, 'do_sample': True, 'temperature': 0.8, 'top_p': 0.95,
                'transformers_version': '4.57.0'})
    write_safetensors(os.path.join(a.out, 'model.safetensors'),
                      {k: v.to(torch.bfloat16) for k, v in model.hf_state('base').items()}, {'format': 'pt'})
    for name in ('tokenizer.json', 'tokenizer_config.json'):
        shutil.copy(os.path.join(a.tokenizer, name), os.path.join(a.out, name))
    hl, _ = heldout_loss(model, held)
    write_json(os.path.join(a.out, 'train_log.json'),
               {'args': vars(a), 'parameters': params, 'steps': step, 'train_tokens_seen': step * a.seq * a.batch,
                'final_heldout_loss_f32': hl, 'log': log, 'torch': torch.__version__})
    print(f'wrote {a.out}: held-out loss {hl:.3f} nats (f32 weights)')


if __name__ == '__main__':
    main()
