// llama.cpp's own quantizer, called through the libllama that node-llama-cpp ships (Node has no
// FFI): npm run bench:peers compiles this against the llama.h of the same release (from the
// package's llama/gitRelease.bundle) and links it to that libllama, to write the Q4_K_M file of
// the side-by-side benchmark with llama.cpp's rules (which tensors get Q6_K) and its rounding.
//   llama_quantize IN.gguf OUT.gguf q4_k_m|q8_0|q4_0 [threads]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s IN.gguf OUT.gguf q4_k_m|q8_0|q4_0 [threads]\n", argv[0]);
    return 2;
  }
  enum llama_ftype ftype;
  if (strcmp(argv[3], "q4_k_m") == 0) {
    ftype = LLAMA_FTYPE_MOSTLY_Q4_K_M;
  } else if (strcmp(argv[3], "q8_0") == 0) {
    ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
  } else if (strcmp(argv[3], "q4_0") == 0) {
    ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
  } else {
    fprintf(stderr, "unknown type %s (q4_k_m, q8_0 or q4_0)\n", argv[3]);
    return 2;
  }
  llama_backend_init();
  llama_model_quantize_params params = llama_model_quantize_default_params();
  params.ftype = ftype;
  params.nthread = argc > 4 ? atoi(argv[4]) : 0;
  uint32_t rc = llama_model_quantize(argv[1], argv[2], &params);
  llama_backend_free();
  if (rc != 0) {
    fprintf(stderr, "llama_model_quantize failed (%u)\n", rc);
    return 1;
  }
  return 0;
}
