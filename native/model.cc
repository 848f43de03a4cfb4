#include "model.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "errors.h"
#include "gguf_model.h"

namespace dg {

static void checkConfig(const ModelConfig& c) {
  // src/config.ts validates all of this first; a config that gets here malformed is a malformed
  // checkpoint all the same.
  auto bad = [](const std::string& why) { throw Error(kErrFormat, "invalid model config: " + why, "config.json"); };
  if (c.vocab <= 0 || c.hidden <= 0 || c.layers <= 0 || c.heads <= 0 || c.kvHeads <= 0 || c.headDim <= 0 ||
      c.intermediate <= 0)
    bad("dimensions must be positive");
  if (c.heads % c.kvHeads != 0) bad("num_attention_heads must be a multiple of num_key_value_heads");
  if (c.headDim % 2 != 0) bad("head_dim must be even for RoPE");
}

std::vector<float> ropeInvFreq(const ModelConfig& c) {
  int half = c.headDim / 2;
  std::vector<float> f(half);
  const double pi = 3.14159265358979323846;
  for (int i = 0; i < half; i++) {
    double inv = 1.0 / std::pow(c.ropeTheta, double(2 * i) / double(c.headDim));
    if (c.ropeType == "linear") {
      inv /= c.ropeFactor;
    } else if (c.ropeType == "llama3") {
      double lowWavelen = c.originalMaxPositions / c.lowFreqFactor;
      double highWavelen = c.originalMaxPositions / c.highFreqFactor;
      double wavelen = 2 * pi / inv;
      if (wavelen > lowWavelen) {
        inv /= c.ropeFactor;
      } else if (wavelen >= highWavelen) {
        double smooth = (c.originalMaxPositions / wavelen - c.lowFreqFactor) / (c.highFreqFactor - c.lowFreqFactor);
        inv = (1 - smooth) * inv / c.ropeFactor + smooth * inv;
      }
    }
    f[i] = float(inv);
  }
  return f;
}

namespace {

struct Binder {
  Model& m;
  std::set<std::string> used;

  const TensorEntry& get(const std::string& name, std::vector<int64_t> shape) {
    const TensorEntry* t = m.store.find(name);
    if (!t) throw Error(kErrFormat, "missing tensor '" + name + "'" + ggufHint(name), fileHint());
    if (t->shape != shape) {
      throw Error(kErrFormat,
                  "tensor '" + name + "' has shape " + shapeStr(t->shape) + ", expected " + shapeStr(shape) +
                      " from config.json",
                  m.store.files()[t->file]->path());
    }
    used.insert(name);
    m.weightBytes += t->end - t->begin;
    int64_t n = 1;
    for (auto d : shape) n *= d;
    m.parameters += n;
    return *t;
  }
  Weight matrix(const std::string& name, int64_t rows, int64_t cols) {
    const TensorEntry& t = get(name, {rows, cols});
    Weight w;
    w.data = t.data;
    w.dtype = t.dtype;
    w.rows = rows;
    w.cols = cols;
    return w;
  }
  std::vector<float> vec(const std::string& name, int64_t n) {
    const TensorEntry& t = get(name, {n});
    std::vector<float> out(static_cast<size_t>(n));
    toF32(out.data(), t.data, t.dtype, 0, size_t(n));
    return out;
  }
  // For a GGUF base, the tensor's name there too (the binder works with Hugging Face names).
  std::string ggufHint(const std::string& name) const {
    if (m.store.files().empty() || !isGgufPath(m.store.files()[0]->path())) return "";
    std::string g = ggufTensorName(name);
    return g.empty() ? "" : " ('" + g + "' in GGUF)";
  }
  std::string fileHint() const {
    return m.store.files().size() == 1 ? m.store.files()[0]->path() : "model.safetensors.index.json";
  }
  static std::string shapeStr(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); i++) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }
};

// Tensors that HF checkpoints may carry but inference does not use.
bool ignorable(const std::string& name) { return name.find("rotary_emb.inv_freq") != std::string::npos; }

// Optional router weights: a layer has all of a router's tensors or none of them.
void bindRouters(Model& m, Binder& b) {
  const ModelConfig& c = m.config;
  int64_t d = c.hidden;
  for (int i = 0; i < c.layers; i++) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = m.layers[size_t(i)];
    static const char* fdNames[] = {"router.router_enc.weight",     "router.router_norm.weight",
                                    "router.router_dec.weight",     "router.router_head.weight",
                                    "router_proj.gate_proj.weight", "router_proj.down_proj.weight",
                                    "router_proj.up_proj.weight"};
    int have = 0;
    for (auto n : fdNames) have += m.store.find(p + n) ? 1 : 0;
    if (have > 0 && have < 7) {
      for (auto n : fdNames)
        if (!m.store.find(p + n))
          throw Error(kErrFormat,
                      "incomplete FlexiDepth weights for layer " + std::to_string(i) + ": missing '" + p + n + "'",
                      b.fileHint());
    }
    if (have == 7) {
      const TensorEntry* enc = m.store.find(p + "router.router_enc.weight");
      const TensorEntry* gate = m.store.find(p + "router_proj.gate_proj.weight");
      if (enc->shape.size() != 2 || gate->shape.size() != 2)
        throw Error(kErrFormat, "FlexiDepth weights of layer " + std::to_string(i) + " must be matrices",
                    m.store.files()[enc->file]->path());
      int64_t r = enc->shape[0], mm = gate->shape[0];
      auto checkWidth = [&](const char* key, int factor, int64_t of, int64_t width, const std::string& tensor) {
        if (factor > 0 && of / factor != width)
          throw Error(kErrFormat,
                      "'" + std::string(key) + "' is " + std::to_string(factor) + ", so layer " + std::to_string(i) +
                          " would be " + std::to_string(of) + " / " + std::to_string(factor) + " = " +
                          std::to_string(of / factor) + " wide, but " + p + tensor + " has " + std::to_string(width) +
                          " rows",
                      c.configFile);
      };
      checkWidth("router_reduction_factor", c.routerReductionFactor, d, r, "router.router_enc.weight");
      checkWidth("proj_reduction_factor", c.projReductionFactor, c.intermediate, mm, "router_proj.gate_proj.weight");
      FlexiDepthWeights& f = L.flexi;
      f.enc = b.matrix(p + "router.router_enc.weight", r, d);
      f.norm = b.vec(p + "router.router_norm.weight", r);
      f.dec = b.matrix(p + "router.router_dec.weight", d, r);
      f.head = b.matrix(p + "router.router_head.weight", 1, d);
      f.gate = b.matrix(p + "router_proj.gate_proj.weight", mm, d);
      f.down = b.matrix(p + "router_proj.down_proj.weight", mm, d);
      f.up = b.matrix(p + "router_proj.up_proj.weight", d, mm);
      f.present = true;
      m.flexiDepthLayers.push_back(i);
    }
    SkipRouterWeights& s = L.skip;
    if (m.store.find(p + "skip_router.weight")) s.wLayer = b.matrix(p + "skip_router.weight", 2, d), s.layer = true;
    if (m.store.find(p + "self_attn.skip_router.weight"))
      s.wAttn = b.matrix(p + "self_attn.skip_router.weight", 2, d), s.attn = true;
    if (m.store.find(p + "mlp.skip_router.weight")) s.wMlp = b.matrix(p + "mlp.skip_router.weight", 2, d), s.mlp = true;
    if (s.layer && (s.attn || s.mlp))
      throw Error(kErrFormat,
                  "layer " + std::to_string(i) + " has both a whole-layer and a per-module SkipLayer router",
                  b.fileHint());
    if (s.layer || s.attn || s.mlp) m.skipRouterLayers.push_back(i);
  }
  // The one place where config.json's routing_layers and the router tensors are held to agree.
  if (c.hasRoutingLayers) {
    for (int l : c.routingLayers)
      if (l < 0 || l >= c.layers || !m.layers[size_t(l)].flexi.present)
        throw Error(kErrFormat,
                    "'routing_layers' lists layer " + std::to_string(l) +
                        ", which has no FlexiDepth router weights (model.layers." + std::to_string(l) +
                        ".router.* and .router_proj.*)",
                    c.configFile);
    for (int l : m.flexiDepthLayers)
      if (std::find(c.routingLayers.begin(), c.routingLayers.end(), l) == c.routingLayers.end())
        throw Error(
            kErrFormat,
            "layer " + std::to_string(l) + " has FlexiDepth router weights but 'routing_layers' does not list it",
            c.configFile);
  }
}

}  // namespace

std::unique_ptr<Model> loadModel(const ModelConfig& cfg, const std::vector<std::string>& files, bool prefault,
                                 const std::function<bool(double)>& onProgress) {
  checkConfig(cfg);
  auto m = std::make_unique<Model>();
  m->config = cfg;
  m->store.open(files);
  const ModelConfig& c = m->config;
  Binder b{*m, {}};
  int64_t d = c.hidden, qd = int64_t(c.heads) * c.headDim, kvd = int64_t(c.kvHeads) * c.headDim;
  m->embed = b.matrix("model.embed_tokens.weight", c.vocab, d);
  m->layers.resize(size_t(c.layers));
  for (int i = 0; i < c.layers; i++) {
    std::string p = "model.layers." + std::to_string(i) + ".";
    LayerWeights& L = m->layers[size_t(i)];
    L.inputNorm = b.vec(p + "input_layernorm.weight", d);
    L.postAttnNorm = b.vec(p + "post_attention_layernorm.weight", d);
    L.q = b.matrix(p + "self_attn.q_proj.weight", qd, d);
    L.k = b.matrix(p + "self_attn.k_proj.weight", kvd, d);
    L.v = b.matrix(p + "self_attn.v_proj.weight", kvd, d);
    L.o = b.matrix(p + "self_attn.o_proj.weight", d, qd);
    L.gate = b.matrix(p + "mlp.gate_proj.weight", c.intermediate, d);
    L.up = b.matrix(p + "mlp.up_proj.weight", c.intermediate, d);
    L.down = b.matrix(p + "mlp.down_proj.weight", d, c.intermediate);
    if (c.qkvBias) {
      L.qBias = b.vec(p + "self_attn.q_proj.bias", qd);
      L.kBias = b.vec(p + "self_attn.k_proj.bias", kvd);
      L.vBias = b.vec(p + "self_attn.v_proj.bias", kvd);
    }
    if (c.oBias) L.oBias = b.vec(p + "self_attn.o_proj.bias", d);
    if (c.mlpBias) {
      L.gateBias = b.vec(p + "mlp.gate_proj.bias", c.intermediate);
      L.upBias = b.vec(p + "mlp.up_proj.bias", c.intermediate);
      L.downBias = b.vec(p + "mlp.down_proj.bias", d);
    }
  }
  bindRouters(*m, b);
  m->finalNorm = b.vec("model.norm.weight", d);
  if (c.tiedEmbeddings) {
    m->lmHead = m->embed;
    // Some tied checkpoints still store lm_head.weight; accept it only if it has the right shape.
    if (m->store.find("lm_head.weight")) b.get("lm_head.weight", {c.vocab, d});
  } else {
    m->lmHead = b.matrix("lm_head.weight", c.vocab, d);
  }
  m->invFreq = ropeInvFreq(c);
  // GGUF files of Llama 3.x carry their RoPE scaling as one divisor per frequency (llama.cpp's
  // rope_freqs tensor, which its converter computes from rope_scaling) instead of metadata.
  if (m->store.find("rope_freqs.weight")) {
    std::vector<float> div = b.vec("rope_freqs.weight", c.headDim / 2);
    for (size_t i = 0; i < div.size(); i++) {
      if (!(div[i] > 0) || !std::isfinite(div[i]))
        throw Error(kErrFormat, "tensor 'rope_freqs.weight' element " + std::to_string(i) + " is not a positive number",
                    b.fileHint());
      m->invFreq[i] /= div[i];
    }
  }
  for (auto& kv : m->store.all()) {
    if (b.used.count(kv.first) || ignorable(kv.first)) continue;
    throw Error(kErrFormat, "unexpected tensor '" + kv.first + "' that config.json does not account for",
                m->store.files()[kv.second->file]->path());
  }
  std::set<DType> dtypes;
  for (auto& kv : m->store.all())
    if (b.used.count(kv.first)) dtypes.insert(kv.second->dtype);
  for (DType t : dtypes) m->dtypeSummary += (m->dtypeSummary.empty() ? "" : "+") + std::string(dtypeName(t));

  // Read the pages in now (with progress) rather than during the first token.
  if (prefault) {
    size_t total = 0, done = 0;
    for (auto& f : m->store.files()) total += f->fileSize();
    const size_t chunk = 64u << 20;
    for (auto& f : m->store.files()) {
      for (auto& t : f->tensors()) {
        const volatile unsigned char* p = static_cast<const unsigned char*>(t.data);
        size_t n = t.end - t.begin;
        if (!p || n == 0) continue;
        madvise(const_cast<void*>(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(4095))),
                n + (reinterpret_cast<uintptr_t>(p) & 4095), MADV_WILLNEED);
        for (size_t off = 0; off < n; off += chunk) {
          size_t end = std::min(n, off + chunk);
          unsigned sink = 0;
          for (size_t i = off; i < end; i += 4096) sink += p[i];
          (void)sink;
          done += end - off;
          if (onProgress && !onProgress(total ? double(done) / double(total) : 1.0))
            throw Error(kErrAborted, "model load was aborted");
        }
      }
    }
  }
  if (onProgress) onProgress(1.0);
  return m;
}

}  // namespace dg
