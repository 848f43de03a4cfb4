"""A plain PyTorch Llama-family decoder (Llama, Mistral, Qwen2) with FlexiDepth and SkipLayer routing.

It loads and saves exact Hugging Face checkpoints (weight names and config keys as transformers
uses them) and computes what depthgate's engine computes, so routers trained here run there
unchanged. The routed layer follows the released FlexiDepth semantics (see README, "Policies"):

    x = input_layernorm(h);  w = sigmoid(router(x));  run = w > 0.5
    h' = h + run * self_attn(x)                       # K/V of every token is still computed
    y  = post_attention_layernorm(h')
    h_next = h' + (mlp(y) * w  if run  else  adapter(y) * (1 - w))

Training uses exactly this forward pass: the hard decision selects the branch and masks the
attention output, and the router learns through the continuous scales w and (1 - w).

SkipLayer (whole-layer routers): logits = skip_router(input_layernorm(h)) ordered [skip, run];
a skipped token is the identity (its K/V are still written). Training uses a straight-through
Gumbel-softmax: the forward pass is hard 0/1, the gradient is the soft one.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Config:
    def __init__(self, d):
        self.raw = d
        self.model_type = d.get('model_type', 'llama')
        self.vocab = d['vocab_size']
        self.hidden = d['hidden_size']
        self.inter = d['intermediate_size']
        self.layers = d['num_hidden_layers']
        self.heads = d['num_attention_heads']
        self.kv_heads = d.get('num_key_value_heads') or self.heads
        self.head_dim = d.get('head_dim') or self.hidden // self.heads
        self.eps = d.get('rms_norm_eps', 1e-6)
        self.theta = d.get('rope_theta', 10000.0)
        self.rope_scaling = d.get('rope_scaling')
        self.tied = d.get('tie_word_embeddings', False)
        self.qkv_bias = self.model_type == 'qwen2' or d.get('attention_bias', False)
        self.o_bias = self.model_type != 'qwen2' and d.get('attention_bias', False)
        self.mlp_bias = d.get('mlp_bias', False)
        self.max_pos = d.get('max_position_embeddings', 2048)


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        # transformers' order: variance in f32, normalise, cast back, then scale.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(cfg):
    hd = cfg.head_dim
    inv = 1.0 / (cfg.theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    s = cfg.rope_scaling
    if s:
        kind = s.get('rope_type') or s.get('type')
        if kind == 'linear':
            inv = inv / s['factor']
        elif kind == 'llama3':
            factor, lo, hi, old = s['factor'], s['low_freq_factor'], s['high_freq_factor'], s['original_max_position_embeddings']
            wavelen = 2 * math.pi / inv
            low_wl, high_wl = old / lo, old / hi
            scaled = torch.where(wavelen > low_wl, inv / factor, inv)
            smooth = (old / wavelen - lo) / (hi - lo)
            mid = (1 - smooth) * scaled / factor + smooth * scaled
            is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
            inv = torch.where(is_mid, mid, scaled)
        elif kind not in (None, 'default'):
            raise ValueError(f'rope_scaling type {kind!r} is not supported')
    return inv.float()


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        d, hd = cfg.hidden, cfg.head_dim
        self.q_proj = nn.Linear(d, cfg.heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.heads * hd, d, bias=cfg.o_bias)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(B, T, c.heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, c.kv_heads, c.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = c.heads // c.kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(c.head_dim) + mask
        y = att.softmax(-1) @ v
        return self.o_proj(y.transpose(1, 2).reshape(B, T, c.heads * c.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(y)) * up(y)). The FlexiDepth adapter has the same form, named differently."""

    def __init__(self, d, m, bias=False):
        super().__init__()
        self.gate_proj = nn.Linear(d, m, bias=bias)
        self.up_proj = nn.Linear(d, m, bias=bias)
        self.down_proj = nn.Linear(m, d, bias=bias)

    def forward(self, y):
        return self.down_proj(F.silu(self.gate_proj(y)) * self.up_proj(y))


class FlexiRouter(nn.Module):
    """router_enc (d -> r), RMSNorm over r, tanh, router_dec (r -> d), router_head (d -> 1)."""

    def __init__(self, d, r, eps):
        super().__init__()
        self.router_enc = nn.Linear(d, r, bias=False)
        self.router_norm = RMSNorm(r, eps)
        self.router_dec = nn.Linear(r, d, bias=False)
        self.router_head = nn.Linear(d, 1, bias=False)

    def forward(self, x):
        return self.router_head(self.router_dec(torch.tanh(self.router_norm(self.router_enc(x))))).squeeze(-1)


class FlexiAdapter(nn.Module):
    """The official names: gate_proj and down_proj map d -> m, up_proj maps m -> d."""

    def __init__(self, d, m):
        super().__init__()
        self.gate_proj = nn.Linear(d, m, bias=False)
        self.down_proj = nn.Linear(d, m, bias=False)
        self.up_proj = nn.Linear(m, d, bias=False)

    def forward(self, y):
        return self.up_proj(F.silu(self.gate_proj(y)) * self.down_proj(y))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = MLP(cfg.hidden, cfg.inter, cfg.mlp_bias)
        self.router = None        # FlexiRouter when FlexiDepth-routed
        self.router_proj = None   # FlexiAdapter when FlexiDepth-routed
        self.skip_router = None   # nn.Linear(d, 2) when SkipLayer-routed


class Llama(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab, cfg.hidden)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.eps)
        self.lm_head = None if cfg.tied else nn.Linear(cfg.hidden, cfg.vocab, bias=False)
        self.register_buffer('inv_freq', rope_inv_freq(cfg), persistent=False)
        self.gumbel_tau = 1.0

    # --- routing set-up ------------------------------------------------------------------------
    def add_flexidepth(self, layers, router_width=None, adapter_width=None):
        """Widths default to the release's reduction factor 16: hidden/16 and intermediate/16."""
        d = self.cfg.hidden
        for i in layers:
            L = self.layers[i]
            L.router = FlexiRouter(d, router_width or max(1, d // 16), self.cfg.eps)
            L.router_proj = FlexiAdapter(d, adapter_width or max(1, self.cfg.inter // 16))
            # Zero output projection: a skipped token starts as "no MLP update" rather than noise.
            nn.init.zeros_(L.router_proj.up_proj.weight)
            nn.init.normal_(L.router.router_head.weight, std=0.02)

    def add_skiplayer(self, layers):
        for i in layers:
            L = self.layers[i]
            L.skip_router = nn.Linear(self.cfg.hidden, 2, bias=False)
            nn.init.normal_(L.skip_router.weight, std=0.02)

    # --- forward -------------------------------------------------------------------------------
    def forward(self, ids, mode='none', collect_hidden=False):
        """Returns (logits [B,T,V], aux). aux holds per-layer router weights or run masks and,
        with collect_hidden, the residual stream entering each layer and leaving the last."""
        B, T = ids.shape
        h = self.embed_tokens(ids)
        pos = torch.arange(T, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((T, T), float('-inf')).triu(1)
        aux = {'weights': {}, 'run': {}, 'hidden': []}
        for i, L in enumerate(self.layers):
            if collect_hidden:
                aux['hidden'].append(h)
            x = L.input_layernorm(h)
            if mode == 'flexidepth' and L.router is not None:
                w = torch.sigmoid(L.router(x).float())
                run = (w > 0.5).to(h.dtype)
                h2 = h + run.unsqueeze(-1) * L.self_attn(x, cos, sin, mask)
                y = L.post_attention_layernorm(h2)
                full = L.mlp(y) * w.unsqueeze(-1)
                adapt = L.router_proj(y) * (1 - w).unsqueeze(-1)
                h = h2 + torch.where(run.unsqueeze(-1) > 0, full, adapt)
                aux['weights'][i] = w
                aux['run'][i] = run
            elif mode == 'skiplayer' and L.skip_router is not None:
                logits = L.skip_router(x).float()
                if self.training:
                    g = F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True)[..., 1]
                else:
                    g = (logits[..., 1] > logits[..., 0]).float()
                run = g.to(h.dtype).unsqueeze(-1)
                h2 = h + run * L.self_attn(x, cos, sin, mask)
                h = h2 + run * L.mlp(L.post_attention_layernorm(h2))
                aux['weights'][i] = logits.softmax(-1)[..., 1]
                aux['run'][i] = g
            else:
                h = h + L.self_attn(x, cos, sin, mask)
                h = h + L.mlp(L.post_attention_layernorm(h))
        if collect_hidden:
            aux['hidden'].append(h)
        h = self.norm(h)
        logits = h @ self.embed_tokens.weight.t() if self.lm_head is None else self.lm_head(h)
        return logits, aux

    # --- Hugging Face names --------------------------------------------------------------------
    def hf_state(self, which='base'):
        """{hf_name: tensor}: 'base' = the Llama weights, 'flexidepth' / 'skiplayer' = the routers."""
        out = {}
        for name, p in self.state_dict().items():
            kind = 'flexidepth' if ('.router.' in name or '.router_proj.' in name) else 'skiplayer' if '.skip_router.' in name else 'base'
            if kind != which:
                continue
            out[name if name.startswith('lm_head') else 'model.' + name] = p
        return out

    def load_hf(self, tensors, strict=True):
        """Loads {hf_name: tensor}; routing modules must have been added first."""
        own = self.state_dict()
        seen = set()
        for hf, t in tensors.items():
            name = hf[len('model.'):] if hf.startswith('model.') else hf
            if name not in own:
                if strict:
                    raise KeyError(f'checkpoint tensor {hf} has no place in this model')
                continue
            if tuple(own[name].shape) != tuple(t.shape):
                raise ValueError(f'{hf}: shape {tuple(t.shape)}, expected {tuple(own[name].shape)}')
            own[name].copy_(t.float())
            seen.add(name)
        return seen


def init_weights(model, seed):
    """GPT-2-style init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)."""
    g = torch.Generator().manual_seed(seed)
    std = 0.02
    for name, p in model.named_parameters():
        if p.dim() == 1:
            nn.init.ones_(p) if name.endswith('norm.weight') else nn.init.zeros_(p)
            continue
        s = std / math.sqrt(2 * model.cfg.layers) if name.endswith(('o_proj.weight', 'down_proj.weight')) else std
        with torch.no_grad():
            p.copy_(torch.randn(p.shape, generator=g) * s)
