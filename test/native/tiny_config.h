// The shapes of the default tiny test model (scripts/make-tiny-model.js --layers 2), for the
// native harnesses (fuzzing, leak checks).
#pragma once
#include "model.h"

inline dg::ModelConfig tinyTestConfig() {
  dg::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab = 320;
  c.hidden = 64;
  c.layers = 2;
  c.heads = 4;
  c.kvHeads = 2;
  c.headDim = 16;
  c.intermediate = 128;
  c.maxPositions = 256;
  c.rmsEps = 1e-5f;
  return c;
}
