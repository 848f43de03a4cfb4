#include "gguf_model.h"

#include <cstring>

#include "errors.h"

namespace dg {

DType dtypeForGgmlType(uint32_t ggmlType, const std::string& tensor, const std::string& path) {
  switch (ggmlType) {
    case 0:
      return DType::F32;
    case 1:
      return DType::F16;
    case 30:
      return DType::BF16;
    case 8:  // llama.cpp's Q8_0 block (f16 scale + 32 int8), the layout of DType::Q8_0
      return DType::Q8_0;
    case 2:  // llama.cpp's Q4_0 block (f16 scale + 16 bytes of nibbles), the layout of DType::Q4_0
      return DType::Q4_0;
    case 12:  // llama.cpp's block_q4_K (256 weights, 144 bytes), the layout of DType::Q4_K
      return DType::Q4_K;
    case 14:  // llama.cpp's block_q6_K (256 weights, 210 bytes), the layout of DType::Q6_K
      return DType::Q6_K;
    default:
      break;
  }
  const GgmlTypeInfo* t = ggmlTypeInfo(ggmlType);
  std::string name = t ? t->name : "type " + std::to_string(ggmlType);
  throw Error(
      kErrUnsupported,
      "tensor '" + tensor + "' has ggml type " + name +
          ", which depthgate does not compute with (GGUF tensors of type F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K "
          "load)",
      path);
}

namespace {
const std::pair<const char*, const char*> kTopNames[] = {
    {"token_embd.weight", "model.embed_tokens.weight"},
    {"output_norm.weight", "model.norm.weight"},
    {"output.weight", "lm_head.weight"},
};
const std::pair<const char*, const char*> kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.bias", "self_attn.o_proj.bias"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
    {"ffn_gate.bias", "mlp.gate_proj.bias"},
    {"ffn_up.bias", "mlp.up_proj.bias"},
    {"ffn_down.bias", "mlp.down_proj.bias"},
};
}  // namespace

std::string hfTensorName(const std::string& g) {
  for (auto& p : kTopNames)
    if (g == p.first) return p.second;
  if (g.compare(0, 4, "blk.") != 0) return g;
  size_t dot = g.find('.', 4);
  if (dot == std::string::npos || dot == 4) return g;
  std::string layer = g.substr(4, dot - 4);
  for (char ch : layer)
    if (ch < '0' || ch > '9') return g;
  std::string rest = g.substr(dot + 1);

  for (auto& p : kLayerNames)
    if (rest == p.first) return "model.layers." + layer + "." + p.second;
  return g;
}

std::string ggufTensorName(const std::string& hf) {
  for (auto& p : kTopNames)
    if (hf == p.second) return p.first;
  const std::string prefix = "model.layers.";
  if (hf.compare(0, prefix.size(), prefix) != 0) return "";
  size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  std::string rest = hf.substr(dot + 1);
  for (auto& p : kLayerNames)
    if (rest == p.second) return "blk." + hf.substr(prefix.size(), dot - prefix.size()) + "." + p.first;
  return "";
}

namespace {

int64_t headCount(const GgufHeader& h, const std::string& key, const std::string& path) {
  const GgufValue* v = h.find(key);
  int64_t n = 0;
  if (!v || !v->asInt(n) || n <= 0 || n > (1 << 20))
    throw Error(kErrFormat, "metadata '" + key + "' must be a positive integer", path);
  return n;
}

// Restores HF row order: GGUF row h*hd + 2i + j holds HF row h*hd + j*hd/2 + i (convert_hf_to_gguf.py
// LlamaModel.permute: reshape(heads, 2, hd/2, ...).swapaxes(1, 2)).
void unpermuteRows(GgufFile& f, TensorEntry& t, int64_t heads, const std::string& key) {
  int64_t rows = t.shape[0];
  if (rows % heads != 0 || (rows / heads) % 2 != 0)
    throw Error(kErrFormat,
                "tensor '" + t.name + "' has " + std::to_string(rows) + " rows, not an even head size times '" + key +
                    "' (" + std::to_string(heads) + ")",
                f.path());
  int64_t hd = rows / heads, half = hd / 2;
  size_t rowBytes = rows ? (t.end - t.begin) / size_t(rows) : 0;
  auto copy = std::make_unique<unsigned char[]>(t.end - t.begin);
  const unsigned char* src = static_cast<const unsigned char*>(t.data);
  for (int64_t h = 0; h < heads; h++)
    for (int64_t i = 0; i < half; i++)
      for (int64_t j = 0; j < 2; j++)
        std::memcpy(copy.get() + size_t(h * hd + j * half + i) * rowBytes, src + size_t(h * hd + 2 * i + j) * rowBytes,
                    rowBytes);
  t.data = copy.get();
  f.ownedCopies().push_back(std::move(copy));
}

}  // namespace

void adaptGgufTensors(GgufFile& f) {
  const GgufHeader& h = f.header();
  const GgufValue* arch = h.find("general.architecture");
  if (!arch || arch->type != GgufType::STRING)
    throw Error(kErrFormat, "metadata 'general.architecture' is missing or not a string", f.path());
  if (arch->str != "llama" && arch->str != "qwen2")
    throw Error(kErrUnsupported, "GGUF architecture '" + arch->str + "' is not supported (llama and qwen2 are)",
                f.path());
  auto& ts = f.tensors();
  for (size_t i = 0; i < ts.size(); i++) ts[i].dtype = dtypeForGgmlType(h.tensors[i].type, ts[i].name, f.path());
  bool permuted = arch->str == "llama";
  int64_t heads = 0, kvHeads = 0;
  if (permuted) {
    heads = headCount(h, "llama.attention.head_count", f.path());
    kvHeads = h.find("llama.attention.head_count_kv") ? headCount(h, "llama.attention.head_count_kv", f.path()) : heads;
  }
  for (auto& t : ts) {
    std::string g = t.name;
    t.name = hfTensorName(g);
    if (!permuted || t.shape.empty() || !t.data) continue;
    bool q = t.name.find(".self_attn.q_proj.") != std::string::npos,
         k = t.name.find(".self_attn.k_proj.") != std::string::npos;
    if (q) unpermuteRows(f, t, heads, "llama.attention.head_count");
    if (k) unpermuteRows(f, t, kvHeads, "llama.attention.head_count_kv");
  }
}

}  // namespace dg
