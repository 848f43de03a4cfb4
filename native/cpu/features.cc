// Processor feature detection and the choice of kernel variant. Every SIMD kernel is compiled
// with a per-function target attribute, so one binary runs everywhere and this file decides
// at run time which of them may execute.
#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#include "kernels.h"
#include "matmul_common.h"

namespace dg {

const CpuFeatures& cpuFeatures() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    // libgcc's detection also checks that the OS saves the wide registers (XGETBV), so a
    // feature reported here is usable, not merely present in CPUID.
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    // F16C from CPUID leaf 1, ECX bit 29: clang's __builtin_cpu_supports has no "f16c".
    unsigned a = 0, b = 0, c = 0, d = 0;
    f.f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    unsigned vendor[3] = {0, 0, 0};  // leaf 0: the vendor string in EBX, EDX, ECX
    if (__get_cpuid(0, &a, &vendor[0], &vendor[2], &vendor[1])) f.amd = std::memcmp(vendor, "AuthenticAMD", 12) == 0;
#endif
    return f;
  }();
  return features;
}

const char* cpuKernelVariant() {
  // Read once: kernels cache function choices, and switching mid-run would mix variants.
  static const char* const variant = [] {
    const CpuFeatures& f = cpuFeatures();
    bool haveAvx2 = f.avx2 && f.fma && f.f16c;
    bool haveAvx512 = haveAvx2 && f.avx512f && f.avx512bw;
    int best = haveAvx512 ? 2 : haveAvx2 ? 1 : 0;
    int cap = 2;
    if (const char* env = std::getenv("DEPTHGATE_CPU_KERNELS")) {
      if (std::strcmp(env, "scalar") == 0)
        cap = 0;
      else if (std::strcmp(env, "avx2") == 0)
        cap = 1;
    }
    int chosen = best < cap ? best : cap;
    return chosen == 2 ? "avx512" : chosen == 1 ? "avx2" : "scalar";
  }();
  return variant;
}

const char* cpuPrefetchLevel() {
  static const char* const names[] = {"off", "l1", "l2"};  // PrefetchLevel's order
  return names[int(matmul_detail::kPrefetchLevel)];
}

}  // namespace dg
