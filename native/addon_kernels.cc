// Kernels exposed for tests and microbenchmarks (synchronous, single call each, on the calling
// thread): native().kernels.{matmul, rmsnorm, copy, readSum, hugePageBuffer}.
#include <napi.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "addon_kernels.h"
#include "addon_dispatcher.h"
#include "errors.h"
#include "kernels.h"
#include "threadpool.h"
#include "weight_arena.h"

namespace dg {

namespace {

[[noreturn]] void throwArg(Napi::Env env, const std::string& message) { throw makeError(env, kErrArg, message, ""); }

Weight weightArg(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) throwArg(env, "weight must be {data, dtype, rows, cols}");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Value d = o.Get("data");
  if (!d.IsTypedArray()) throwArg(env, "weight.data must be a typed array");
  auto ta = d.As<Napi::TypedArray>();
  std::string dt = o.Get("dtype").IsString() ? o.Get("dtype").As<Napi::String>().Utf8Value() : "";
  Weight w;
  w.dtype = dt == "f32" ? DType::F32 : dt == "f16" ? DType::F16 : dt == "bf16" ? DType::BF16 : DType(-1);
  if (int(w.dtype) < 0) throwArg(env, "weight.dtype must be f32, f16 or bf16");
  w.rows = o.Get("rows").As<Napi::Number>().Int64Value();
  w.cols = o.Get("cols").As<Napi::Number>().Int64Value();
  if (w.rows <= 0 || w.cols <= 0 || size_t(ta.ByteLength()) < w.bytes())
    throwArg(env, "weight.data is smaller than rows * cols");
  w.data = static_cast<uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
  return w;
}

float* floatsArg(Napi::Env env, Napi::Value v, size_t need, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throwArg(env, std::string(what) + " must be a Float32Array");
  auto a = v.As<Napi::Float32Array>();
  if (a.ElementLength() < need) throwArg(env, std::string(what) + " is too short");
  return a.Data();
}

ThreadPool& kernelPool(int threads) {
  static std::unique_ptr<ThreadPool> pool;
  if (!pool || pool->size() != threads) pool = std::make_unique<ThreadPool>(threads);
  return *pool;
}

// matmul(out, x, rows, weight, threads, bias?)
Napi::Value KernelMatmul(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Weight w = weightArg(env, info[3]);
  int64_t rows = info[2].As<Napi::Number>().Int64Value();
  if (rows < 1) throwArg(env, "rows must be positive");
  float* out = floatsArg(env, info[0], size_t(rows * w.rows), "out");
  float* x = floatsArg(env, info[1], size_t(rows * w.cols), "x");
  int threads = info[4].IsNumber() ? info[4].As<Napi::Number>().Int32Value() : 1;
  const float* bias = info[5].IsTypedArray() ? floatsArg(env, info[5], size_t(w.rows), "bias") : nullptr;
  matmul(kernelPool(threads < 1 ? 1 : threads), out, w.rows, x, w.cols, rows, w, bias);
  return env.Undefined();
}

// rmsnorm(out, x, rows, dim, weight, eps, threads)
Napi::Value KernelRmsnorm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t rows = info[2].As<Napi::Number>().Int64Value(), dim = info[3].As<Napi::Number>().Int64Value();
  if (rows < 1 || dim < 1) throwArg(env, "rows and dim must be positive");
  float* out = floatsArg(env, info[0], size_t(rows * dim), "out");
  float* x = floatsArg(env, info[1], size_t(rows * dim), "x");
  float* wt = floatsArg(env, info[4], size_t(dim), "weight");
  int threads = info[6].IsNumber() ? info[6].As<Napi::Number>().Int32Value() : 1;
  rmsnorm(kernelPool(threads < 1 ? 1 : threads), out, x, rows, dim, wt, info[5].As<Napi::Number>().FloatValue());
  return env.Undefined();
}

// copy(dst, src): memcpy of the smaller byte length (for bandwidth floors).
Napi::Value KernelCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || !info[1].IsTypedArray()) throwArg(env, "copy(dst, src) needs typed arrays");
  auto d = info[0].As<Napi::TypedArray>(), s = info[1].As<Napi::TypedArray>();
  size_t n = std::min(d.ByteLength(), s.ByteLength());
  std::memcpy(static_cast<uint8_t*>(d.ArrayBuffer().Data()) + d.ByteOffset(),
              static_cast<uint8_t*>(s.ArrayBuffer().Data()) + s.ByteOffset(), n);
  return env.Undefined();
}

// readSum(src, threads, streams = 8): sums src as 64-bit words on `threads` threads and returns
// the sum's low 32 bits (so the reads cannot be optimised away). This is the read half of a decode
// step's bandwidth floor: a matrix-vector product streams its weights and writes almost nothing,
// so a copy (read + write, one thread) understates what the machine can read. Eight independent
// accumulators over 64-byte lines let the compiler vectorise the loop and keep loads in flight.
//
// `streams` (1-64): each thread's range is cut into that many parts, read a line of each in turn.
// Which count reads fastest depends on the machine, so the benchmarks' floor takes the best of
// several (bench/machine.mts ReadProbe): on the Intel Xeon VM one sequential stream per thread
// reached about 14 GB/s on 2 threads and 8 streams 28-30; on the AMD EPYC (Zen 4) VM, on 2 MB
// pages, 1 stream read 22-41 GB/s and 8 streams 10-30, one stream the faster in every paired
// measurement. A floor from one pattern alone can sit below what the engine reaches.
Napi::Value KernelReadSum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throwArg(env, "readSum(src, threads, streams) needs a typed array");
  auto s = info[0].As<Napi::TypedArray>();
  int threads = info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 1;
  int64_t streams = 8;
  if (info.Length() > 2 && !info[2].IsUndefined()) {
    const double v = info[2].IsNumber() ? info[2].As<Napi::Number>().DoubleValue() : 0;
    if (!(v >= 1 && v <= 64 && v == double(int64_t(v))))
      throwArg(env, "readSum: streams must be an integer from 1 to 64");
    streams = int64_t(v);
  }
  const auto* base = static_cast<const uint8_t*>(s.ArrayBuffer().Data()) + s.ByteOffset();
  const int64_t lines = int64_t(s.ByteLength() / 64);
  std::vector<uint64_t> partial(size_t(threads < 1 ? 1 : threads) * 8, 0);
  kernelPool(threads < 1 ? 1 : threads).parallelFor(lines, [&](int64_t b, int64_t e, int worker) {
    uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int64_t part = (e - b) / streams;
    auto add = [&](int64_t l) {
      uint64_t w[8];
      std::memcpy(w, base + l * 64, 64);
      for (int k = 0; k < 8; k++) acc[k] += w[k];
    };
    if (streams == 1) {  // the general loop's order, written as the plain sequential loop it is
      for (int64_t l = b; l < e; l++) add(l);
    } else {
      for (int64_t i = 0; i < part; i++)
        for (int64_t st = 0; st < streams; st++) add(b + st * part + i);
      for (int64_t l = b + streams * part; l < e; l++) add(l);
    }
    for (int k = 0; k < 8; k++) partial[size_t(worker) * 8 + size_t(k)] += acc[k];
  });
  uint64_t sum = 0;
  for (uint64_t v : partial) sum += v;
  return Napi::Number::New(env, double(uint32_t(sum)));
}

// hugePageBuffer(bytes) -> {data: Uint8Array, hugePages: boolean}: zeroed memory laid out like the
// CPU backend's copy of the weights (a WeightArena: 2 MB aligned, advised for transparent huge
// pages when the kernel offers them), so the benchmarks' read floor is measured on the same kind
// of pages decode reads, not on 4 KB pages that a 2 MB-paged engine can outrun. Freed when the
// array is collected.
Napi::Value KernelHugePageBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const double v = info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  if (!(v >= 64 && v <= double(int64_t(1) << 40) && v == double(int64_t(v))))
    throwArg(env, "hugePageBuffer: bytes must be an integer from 64 to 2^40");
  const size_t bytes = size_t(v);
  WeightArena* arena = nullptr;
  unsigned char* data = nullptr;
  try {
    arena = new WeightArena(bytes, true, "the read-bandwidth probe's buffer");
    data = arena->take(bytes);
  } catch (const Error& e) {
    delete arena;
    throw makeError(env, e.code, e.what(), "");
  }
  auto ab = Napi::ArrayBuffer::New(
      env, data, bytes, [](Napi::Env, void*, WeightArena* a) { delete a; }, arena);
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Uint8Array::New(env, bytes, ab, 0));
  out.Set("hugePages", Napi::Boolean::New(env, arena->hugePages()));
  return out;
}

}  // namespace

Napi::Object makeKernels(Napi::Env env) {
  Napi::Object kernels = Napi::Object::New(env);
  kernels.Set("matmul", Napi::Function::New(env, KernelMatmul));
  kernels.Set("rmsnorm", Napi::Function::New(env, KernelRmsnorm));
  kernels.Set("copy", Napi::Function::New(env, KernelCopy));
  kernels.Set("readSum", Napi::Function::New(env, KernelReadSum));
  kernels.Set("hugePageBuffer", Napi::Function::New(env, KernelHugePageBuffer));
  return kernels;
}

}  // namespace dg
