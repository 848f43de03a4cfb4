// Run-time loading of the CUDA backend (libdepthgate_cuda.so, built from cuda/ when nvcc is found).
// The addon never links CUDA: it dlopen()s the library on demand, so the same binary runs on
// machines without a GPU, a driver or the library. This header has no CUDA includes; cuda/
// includes it for DG_CUDA_ABI and the entry-point names.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "backend.h"

// Bump whenever anything the library and the addon share changes shape: the dg::Ops virtual
// table and the structs its ops take (backend.h), Weight/DType (tensor.h), dg::Error, or the
// signatures of the three entry points below. The loader refuses a library with another value.
#define DG_CUDA_ABI 3

// The library's exported C entry points (names looked up with dlsym).
//   int       dg_cuda_abi_version(void);                      returns DG_CUDA_ABI
//   int       dg_cuda_probe(char* out, size_t len);           writes JSON, returns 1 if usable
//   dg::Ops*  dg_cuda_create_ops(int device, char* err, size_t len);  nullptr + reason on failure
extern "C" {
typedef int (*dg_cuda_abi_version_fn)(void);
typedef int (*dg_cuda_probe_fn)(char* out, size_t len);
typedef dg::Ops* (*dg_cuda_create_ops_fn)(int device, char* err, size_t len);
}

namespace dg {

// The error code createCudaOps throws when no CUDA backend can be had.
constexpr const char* kErrCudaUnavailable = "ERR_DEPTHGATE_BACKEND_UNAVAILABLE";

struct CudaProbe {
  bool libraryFound = false;  // the library loaded and has the expected ABI
  std::string libraryPath;    // where it was looked for (or loaded from)
  std::string error;          // why it did not load, or "" when it did
  // The library's own report: {"available":bool,"reason":"...","devices":[...]}; when the
  // library did not load, {"available":false,"reason":<error>,"devices":[]}.
  std::string probeJson;
};

// Loads the library once (cached for the life of the process; never unloaded) and asks it
// about GPUs. The library is looked for in $DEPTHGATE_CUDA_LIB when set, else next to the
// addon. Thread-safe, never throws.
CudaProbe probeCuda();

// A CUDA op table on `device`; throws dg::Error(kErrCudaUnavailable, reason) when the library
// or a usable GPU is missing.
std::unique_ptr<Ops> createCudaOps(int device);

}  // namespace dg
