"""The PyTorch half of the GPU benchmarks, run on the GPU machine by scripts/gpu-check.sh:

1. The ceilings, measured in this call: device-to-device copy bandwidth (bytes read + written,
   STREAM convention) and a large bf16 matrix product's rate (random inputs, never zeros).
2. Random bf16 checkpoints of the Llama-3.2-1B and Llama-3-8B shapes, generated here (a
   transformers LlamaForCausalLM built from the config on the GPU, every matrix drawn from
   N(0, 0.02^2), norms 1), written as safetensors with the tokenizer of a tiny depthgate model
   (written by node beforehand with the same vocabulary size); the 8B one also carries FlexiDepth
   routers and adapters on every layer (official tensor names) for the routing benchmarks.
3. The peers on the same shapes and weights: transformers' generate (greedy, its default
   dynamic cache) and a plain PyTorch bf16 decode loop (F.linear, scaled_dot_product_attention
   over a preallocated KV cache), batch 1, 8 and 32.

  python3 bench_torch.py --work DIR --tokenizer-from TINY_DIR --out FILE.json [--models 1b,8b]
  python3 bench_torch.py --self-test --tokenizer-from TINY_DIR --work DIR   (no torch: the config
      and file layout only; used by the dry run)
"""
import argparse
import json
import math
import os
import shutil
import sys
import time

SHAPES = {
    # name: hidden, intermediate, layers, heads, kv heads, head_dim, tied, rope_theta
    "llama-3.2-1b": dict(hidden=2048, intermediate=8192, layers=16, heads=32, kv=8, head_dim=64, tied=True, theta=500000.0),
    "llama-3-8b": dict(hidden=4096, intermediate=14336, layers=32, heads=32, kv=8, head_dim=128, tied=False, theta=500000.0),
}
KEYS = {"1b": "llama-3.2-1b", "8b": "llama-3-8b"}
STD = 0.02
PROMPT = 16


def llama_config(tiny_config, s):
    """The tiny model's config.json (its vocabulary and special tokens) reshaped to s."""
    c = dict(tiny_config)
    c.update({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": s["hidden"],
        "intermediate_size": s["intermediate"], "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"], "num_key_value_heads": s["kv"], "head_dim": s["head_dim"],
        "max_position_embeddings": 8192, "rope_theta": s["theta"], "rope_scaling": None,
        "tie_word_embeddings": s["tied"], "torch_dtype": "bfloat16", "rms_norm_eps": 1e-5,
        "attention_bias": False, "mlp_bias": False,
    })
    return c


def router_shapes(s):
    """FlexiDepth tensors per layer (official names), reductions 16 as in the released checkpoint."""
    d, r, m = s["hidden"], s["hidden"] // 16, s["intermediate"] // 16
    return {"router.router_enc.weight": (r, d), "router.router_norm.weight": (r,), "router.router_dec.weight": (d, r),
            "router.router_head.weight": (1, d), "router_proj.gate_proj.weight": (m, d),
            "router_proj.down_proj.weight": (m, d), "router_proj.up_proj.weight": (d, m)}


def write_dir(out_dir, tiny_dir, config):
    os.makedirs(out_dir, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if os.path.exists(os.path.join(tiny_dir, f)):
            shutil.copy(os.path.join(tiny_dir, f), os.path.join(out_dir, f))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def hf_llama_names(s):
    """The tensor names and shapes of a transformers LlamaForCausalLM state dict."""
    d, i, kvd, qd = s["hidden"], s["intermediate"], s["kv"] * s["head_dim"], s["heads"] * s["head_dim"]
    names = {"model.embed_tokens.weight": ("V", d), "model.norm.weight": (d,)}
    for l in range(s["layers"]):
        p = f"model.layers.{l}."
        names.update({p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                      p + "self_attn.q_proj.weight": (qd, d), p + "self_attn.k_proj.weight": (kvd, d),
                      p + "self_attn.v_proj.weight": (kvd, d), p + "self_attn.o_proj.weight": (d, qd),
                      p + "mlp.gate_proj.weight": (i, d), p + "mlp.up_proj.weight": (i, d), p + "mlp.down_proj.weight": (d, i)})
    if not s["tied"]:
        names["lm_head.weight"] = ("V", d)
    return names


def write_bf16_safetensors(path, tensors):
    """A safetensors file of bf16 tensors from the standard library alone (self-test only)."""
    import random
    import struct
    rng = random.Random(5)
    header, blobs, offset = {}, [], 0
    for name, shape in tensors.items():
        n = 1
        for x in shape:
            n *= x
        if len(shape) == 1:
            vals = [1.0] * n
        else:
            vals = [rng.gauss(0.0, 1.0 / math.sqrt(shape[1])) or 0.01 for _ in range(n)]
        raw = b"".join(struct.pack("<f", v)[2:] for v in vals)  # the top half of each f32: bf16
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def self_test(args):
    """Without torch: the configs and file layout the GPU run writes, on a tiny shape of each kind
    (tied as Llama-3.2-1B, untied with FlexiDepth routers on every layer as the 8B), written with
    the standard library, and bench-torch.json naming them, so the dry run loads them with
    depthgate exactly as the GPU run loads the real ones."""
    tiny = json.load(open(os.path.join(args.tokenizer_from, "config.json")))
    vocab = tiny["vocab_size"]
    small = {"tiny-tied": dict(hidden=64, intermediate=128, layers=4, heads=4, kv=2, head_dim=16, tied=True, theta=500000.0),
             "tiny-routed": dict(hidden=64, intermediate=128, layers=4, heads=4, kv=2, head_dim=16, tied=False, theta=500000.0)}
    for name in args.models.split(","):
        s = SHAPES[KEYS[name]]
        c = llama_config(tiny, s)
        assert c["num_hidden_layers"] == s["layers"] and c["vocab_size"] == vocab
        assert set(router_shapes(s)) == {"router.router_enc.weight", "router.router_norm.weight", "router.router_dec.weight",
                                         "router.router_head.weight", "router_proj.gate_proj.weight",
                                         "router_proj.down_proj.weight", "router_proj.up_proj.weight"}
    report = {"device": None, "selfTest": True, "ceilings": None, "models": [], "peers": [], "errors": []}
    for name, s in small.items():
        out_dir = os.path.join(args.work, name)
        write_dir(out_dir, args.tokenizer_from, llama_config(tiny, s))
        tensors = {k: tuple(vocab if x == "V" else x for x in v) for k, v in hf_llama_names(s).items()}
        routers = not s["tied"]
        if routers:
            for l in range(s["layers"]):
                for k, shape in router_shapes(s).items():
                    tensors[f"model.layers.{l}.{k}"] = shape
        write_bf16_safetensors(os.path.join(out_dir, "model.safetensors"), tensors)
        report["models"].append({"name": name, "dir": out_dir, "shape": s, "routers": routers})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"bench_torch self-test: configs for {args.models} checked; tiny checkpoints in that layout under {args.work}")


# ---- on the GPU ---------------------------------------------------------------------------

def timed(torch, fn, warmup=3, reps=10):
    """Median seconds of fn() with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def ceilings(torch):
    n = 1 << 30  # 1 GiB each way: far beyond the 60 MB L2
    x = torch.empty(n // 4, dtype=torch.float32, device="cuda").uniform_(-1, 1)
    y = torch.empty_like(x)
    t_copy = timed(torch, lambda: y.copy_(x))
    del x, y
    m = 8192
    a = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
    t_mm = timed(torch, lambda: a @ b)
    del a, b
    torch.cuda.empty_cache()
    return {"copyGBs": 2 * n / t_copy / 1e9, "copyBytes": n, "copySeconds": t_copy,
            "bf16MatmulTFLOPs": 2 * m ** 3 / t_mm / 1e12, "matmulN": m, "matmulSeconds": t_mm,
            "method": "median of 10 CUDA-event timings after 3 warm-ups; copy counts bytes read + written; "
                      "random inputs"}


def build_model(torch, transformers, model_dir, seed):
    # The config as any checkpoint's is read (config.json in the model folder), so transformers'
    # own handling of rope_theta and the rest applies.
    cfg = transformers.AutoConfig.from_pretrained(model_dir)
    torch.manual_seed(seed)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = transformers.LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, STD)
            else:
                p.fill_(1.0)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.eval()


def save_checkpoint(torch, model, s, out_dir, with_routers, seed):
    from safetensors.torch import save_file
    tensors = {}
    for k, v in model.state_dict().items():
        if s["tied"] and k == "lm_head.weight":
            continue
        tensors[k] = v.detach().to("cpu").contiguous()
    if with_routers:
        g = torch.Generator(device="cuda").manual_seed(seed + 1)
        for layer in range(s["layers"]):
            for name, shape in router_shapes(s).items():
                if len(shape) == 1:
                    t = torch.ones(shape, dtype=torch.bfloat16)
                else:
                    # Router head gain 5: logits spread over a few units, so thresholds cut cleanly.
                    std = (5.0 if name == "router.router_head.weight" else 1.0) / math.sqrt(shape[1])
                    if name.startswith("router_proj"):
                        std = STD
                    t = (torch.randn(shape, generator=g, device="cuda") * std).to(torch.bfloat16).cpu()
                tensors[f"model.layers.{layer}.{name}"] = t
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def hf_generate_rate(torch, model, vocab, batch, steps):
    """Decode tokens/s of transformers' generate: (T - 1) tokens' time from runs of T and 1 tokens."""
    ids = torch.randint(4, vocab - 8, (batch, PROMPT), device="cuda")
    mask = torch.ones_like(ids)

    def run(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
        torch.cuda.synchronize()
        assert out.shape[1] == PROMPT + n
        return time.perf_counter() - t0

    run(2)
    t1, tn = run(1), run(steps)
    return batch * (steps - 1) / (tn - t1), (tn - t1) / (steps - 1)


def torch_loop_rate(torch, model, s, vocab, batch, steps):
    """A plain bf16 decode loop over the same weights: tokens/s and seconds per step."""
    F = torch.nn.functional
    W = dict(model.named_parameters())
    L, d, H, KV, hd = s["layers"], s["hidden"], s["heads"], s["kv"], s["head_dim"]
    cap = PROMPT + steps + 8
    kc = (torch.randn(L, batch, KV, cap, hd, device="cuda") * 0.5).to(torch.bfloat16)
    vc = (torch.randn(L, batch, KV, cap, hd, device="cuda") * 0.5).to(torch.bfloat16)
    inv = 1.0 / (s["theta"] ** (torch.arange(0, hd, 2, device="cuda", dtype=torch.float32) / hd))
    lm = W["model.embed_tokens.weight"] if s["tied"] else W["lm_head.weight"]

    def norm(x, w):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16) * w

    def rope(t, cos, sin):
        a, b = t[..., : hd // 2], t[..., hd // 2:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    def step(tok, pos):
        ang = pos * inv
        cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        x = W["model.embed_tokens.weight"][tok]
        for l in range(L):
            p = f"model.layers.{l}."
            h = norm(x, W[p + "input_layernorm.weight"])
            q = rope(F.linear(h, W[p + "self_attn.q_proj.weight"]).view(batch, H, 1, hd), cos, sin)
            k = rope(F.linear(h, W[p + "self_attn.k_proj.weight"]).view(batch, KV, hd), cos, sin)
            kc[l, :, :, pos] = k
            vc[l, :, :, pos] = F.linear(h, W[p + "self_attn.v_proj.weight"]).view(batch, KV, hd)
            a = F.scaled_dot_product_attention(q, kc[l, :, :, : pos + 1], vc[l, :, :, : pos + 1], enable_gqa=True)
            x = x + F.linear(a.reshape(batch, H * hd), W[p + "self_attn.o_proj.weight"])
            h = norm(x, W[p + "post_attention_layernorm.weight"])
            g = F.silu(F.linear(h, W[p + "mlp.gate_proj.weight"])) * F.linear(h, W[p + "mlp.up_proj.weight"])
            x = x + F.linear(g, W[p + "mlp.down_proj.weight"])
        return F.linear(norm(x, W["model.norm.weight"]), lm).argmax(-1)

    tok = torch.randint(4, vocab - 8, (batch,), device="cuda")
    with torch.no_grad():
        for i in range(3):
            tok = step(tok, PROMPT + i)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            tok = step(tok, PROMPT + i)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    del kc, vc
    return batch * steps / dt, dt / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--tokenizer-from", required=True)
    ap.add_argument("--out")
    ap.add_argument("--models", default="1b,8b")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        return self_test(args)
    import torch
    import transformers

    t_start = time.time()
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": transformers.__version__, "models": [], "peers": [], "errors": []}

    def save():
        report["seconds"] = round(time.time() - t_start, 1)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    report["ceilings"] = ceilings(torch)
    print(f"ceilings: copy {report['ceilings']['copyGBs']:.0f} GB/s, bf16 matmul "
          f"{report['ceilings']['bf16MatmulTFLOPs']:.0f} TFLOP/s", flush=True)
    save()
    tiny = json.load(open(os.path.join(args.tokenizer_from, "config.json")))
    batches = [int(b) for b in args.batches.split(",")]
    for i, key in enumerate(args.models.split(",")):
        name = KEYS[key]
        s = SHAPES[name]
        out_dir = os.path.join(args.work, name)
        entry = {"name": name, "dir": out_dir, "shape": s, "routers": s["layers"] >= 32}
        try:
            t0 = time.time()
            config = llama_config(tiny, s)
            write_dir(out_dir, args.tokenizer_from, config)
            model = build_model(torch, transformers, out_dir, seed=100 + i)
            entry["fileBytes"] = save_checkpoint(torch, model, s, out_dir, entry["routers"], seed=100 + i)
            entry["generateSeconds"] = round(time.time() - t0, 1)
            report["models"].append(entry)
            save()
            print(f"{name}: {entry['fileBytes'] / 1e9:.2f} GB written in {entry['generateSeconds']} s", flush=True)
            vocab = config["vocab_size"]
            for b in batches:
                for impl, fn in (("hf-generate", lambda: hf_generate_rate(torch, model, vocab, b, args.steps)),
                                 ("torch-loop", lambda: torch_loop_rate(torch, model, s, vocab, b, args.steps))):
                    try:
                        rate, per = fn()
                        report["peers"].append({"model": name, "impl": impl, "batch": b, "tokensPerSecond": rate,
                                                "msPerStep": per * 1e3, "steps": args.steps})
                        print(f"{name} {impl} batch {b}: {rate:.1f} tokens/s ({per * 1e3:.2f} ms/step)", flush=True)
                    except Exception as e:  # a peer's failure is recorded, the rest still run
                        report["errors"].append(f"{name} {impl} batch {b}: {e!r}")
                        print(f"{name} {impl} batch {b} failed: {e!r}", flush=True)
                    save()
            del model
            torch.cuda.empty_cache()
        except Exception as e:
            report["errors"].append(f"{name}: {e!r}")
            print(f"{name} failed: {e!r}", flush=True)
            save()
    save()
    sys.exit(1 if report["errors"] else 0)


if __name__ == "__main__":
    main()
