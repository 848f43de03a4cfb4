// GGUF tensors as the Hugging Face checkpoint the binder (model.cc) expects: names
// (token_embd.weight -> model.embed_tokens.weight, blk.N.attn_q.weight ->
// model.layers.N.self_attn.q_proj.weight, ...), ggml types to DTypes, and for architecture
// `llama` the Q/K row order restored (llama.cpp's convert_hf_to_gguf.py interleaves the two
// rotary halves of every head of q_proj and k_proj; the engine's RoPE rotates halves, as HF does).
#pragma once
#include <cstdint>
#include <string>

#include "gguf.h"
#include "tensor.h"

namespace dg {

// The DType depthgate computes a ggml tensor type with; throws kErrUnsupported naming the tensor
// and the type for the types it does not (yet) compute with. The one place to extend when a new
// weight format lands.
DType dtypeForGgmlType(uint32_t ggmlType, const std::string& tensor, const std::string& path);

// The Hugging Face name of a GGUF tensor name, or the name unchanged when it has none.
std::string hfTensorName(const std::string& ggufName);
// The inverse: the GGUF name of a Hugging Face tensor name, or "" when it has none.
std::string ggufTensorName(const std::string& hfName);

// Renames f's tensors, sets their dtypes and undoes the Q/K permutation (copying those rows out
// of the mapping). Throws dg::Error naming the file and the tensor or metadata key.
void adaptGgufTensors(GgufFile& f);

}  // namespace dg
