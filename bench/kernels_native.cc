// Microbenchmark of the CPU matmul against the machine's memory bandwidth.
//   g++ -std=c++17 -O3 -pthread -Inative bench/kernels_native.cc native/threadpool.cc \
//     native/cpu/{features,convert,kquant,matmul,matmul_kquant,matmul_quant,matmul_tiles}.cc \
//     native/cpu/{norm,rope,activation,attention,sampling}.cc -o /tmp/kbench
//   DEPTHGATE_CPU_KERNELS=avx2 /tmp/kbench
// Decode (rows=1) is reported in GB/s of weight streamed, cycling through enough distinct
// matrices that they cannot sit in the last-level cache; prefill (rows=64) in GFLOP/s.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "kernels.h"

using namespace dg;

static double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main() {
  std::printf("kernel variant: %s\n", cpuKernelVariant());
  const int64_t n = 4096, k = 4096;
  const size_t weightBytes = size_t(n * k) * 2;
  const int copies = 8;  // 8 x 32 MiB: larger than any L3 here
  std::vector<std::vector<uint16_t>> weights(copies, std::vector<uint16_t>(size_t(n * k)));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  for (auto& w : weights)
    for (auto& v : w) v = f32ToBf16(dist(rng));
  std::vector<float> x(size_t(64 * k)), out(size_t(64 * n));
  for (auto& v : x) v = dist(rng);

  {
    const size_t bytes = size_t(1) << 30;
    std::vector<char> a(bytes, 1), b(bytes, 2);
    std::memcpy(b.data(), a.data(), bytes);  // fault the pages in before timing
    double best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
      double t0 = seconds();
      std::memcpy(b.data(), a.data(), bytes);
      best = std::min(best, seconds() - t0);
    }
    std::printf("memcpy 1 GiB: %.1f GB/s copied (%.1f GB/s read+write traffic)\n",
                bytes / best / 1e9, 2 * bytes / best / 1e9);
  }

  for (int threads : {1, 2}) {
    ThreadPool pool(threads);
    for (bool cold : {true, false}) {
      // Best of many single calls: this machine is shared, and the minimum is the figure
      // least disturbed by other processes.
      double dt = 1e9;
      for (int it = 0; it < 96; it++) {
        Weight W{weights[size_t(cold ? it % copies : 0)].data(), DType::BF16, n, k};
        double t0 = seconds();
        matmul(pool, out.data(), n, x.data(), k, 1, W, nullptr);
        dt = std::min(dt, seconds() - t0);
      }
      std::printf("matmul rows=1 bf16 %lldx%lld, %d thread(s), %s: %.3f ms, %.1f GB/s\n",
                  (long long)n, (long long)k, threads, cold ? "cold (DRAM)" : "hot (cache)", dt * 1e3,
                  weightBytes / dt / 1e9);
    }
    for (DType t : {DType::BF16, DType::F16}) {
      Weight W{weights[0].data(), t, n, k};  // the bits are just as good as f16 for timing
      matmul(pool, out.data(), n, x.data(), k, 64, W, nullptr);
      double dt = 1e9;
      for (int it = 0; it < 8; it++) {
        double t0 = seconds();
        matmul(pool, out.data(), n, x.data(), k, 64, W, nullptr);
        dt = std::min(dt, seconds() - t0);
      }
      std::printf("matmul rows=64 %s %lldx%lld, %d thread(s): %.1f ms, %.1f GFLOP/s\n", dtypeName(t),
                  (long long)n, (long long)k, threads, dt * 1e3, 2.0 * 64 * n * k / dt / 1e9);
    }
  }
  return 0;
}
