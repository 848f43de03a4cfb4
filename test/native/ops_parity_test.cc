// Op-level parity harness (like ggml's test-backend-ops): every op of the op table
// (native/backend.h) on two backends, A and B, with fresh random inputs (never zeros) and
// poisoned outputs (NaN, so an element left unwritten fails, and anything written outside what
// an op may write is seen bit for bit), each output compared against a float64 reference
// (test/native/parity/reference.cc) under the per-dtype tolerances of parity/harness.h. Where
// the results are exact (embedding rows, V in the cache, flags, indices, counts, tokens, the
// generator state) the comparison is exact. Row sets come dense and with device-side counts and
// indices, count 0 and count < max, for rows 0, 1, 2, 3, 5, 8, 33, 257.
//
// A is the CPU backend in this process (the best kernel variant, --threads-a threads). B is
// chosen at run time (--b, or $DEPTHGATE_PARITY_B): "cuda" is the CUDA library
// (native/cuda_loader.cc's createCudaOps; $DEPTHGATE_CUDA_LIB names it); "cpu" is a second CPU
// backend in a child process with another kernel variant (--variant-b, default scalar) and
// thread count (--threads-b), whose memory is a separate address space like a device's (see
// parity/child_ops.h); "auto" (the default) takes CUDA when a usable GPU is found, else "cpu".
// With DEPTHGATE_REQUIRE_GPU=1, B must be CUDA: without a usable GPU the run fails with the
// probe's reason.
//
//   ops_parity_test [--b auto|cpu|cuda] [--threads-a N] [--threads-b N] [--variant-b V]
//                   [--seed S] [--quick] [--only g1,g2] [--json FILE]
//   ops_parity_test --mutants    planted bugs (parity/mutant_ops.h): each must be caught
//   ops_parity_test --bench FILE time each op on B (parity/op_bench.cc)
// Prints a table per op group and "N passed, M failed" last; exits non-zero on any failure.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cuda_loader.h"
#include "json.h"
#include "kernels.h"
#include "parity/child_ops.h"
#include "parity/harness.h"
#include "parity/mutant_ops.h"
#include "parity/op_bench.h"

using namespace parity;

namespace {

struct Group {
  const char* name;
  void (*run)(Ctx&);
};
const Group kGroups[] = {
    {"memory", runMemoryCases},       {"embed", runEmbedCases},     {"rmsnorm", runRmsnormCases},
    {"matmul", runMatmulCases},       {"matmul2", runMatmul2Cases}, {"gateUp", runGateUpCases},
    {"tanh", runTanhCases},           {"kvWrite", runKvWriteCases}, {"rope", runRopeCases},
    {"attention", runAttentionCases}, {"routing", runRoutingCases}, {"compact", runCompactCases},
    {"sample", runSampleCases},
};

// The runner that holds a mutation's cases.
const char* runnerFor(const std::string& groupPrefix) {
  if (groupPrefix == "matmul ") return "matmul";
  if (groupPrefix == "matmul2") return "matmul2";
  if (groupPrefix == "matmulGateUp") return "gateUp";
  if (groupPrefix == "tanhRows") return "tanh";
  if (groupPrefix == "kvWriteRope") return "kvWrite";
  if (groupPrefix == "ropeRows") return "rope";
  if (groupPrefix == "routeThreshold" || groupPrefix == "routeArgmax") return "routing";
  return nullptr;  // the same name
}

std::string arg(int& i, int argc, char** argv) {
  if (i + 1 >= argc) {
    std::fprintf(stderr, "%s needs a value\n", argv[i]);
    std::exit(64);
  }
  return argv[++i];
}

std::string selfExe(const char* argv0) {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) return std::string(buf, size_t(n));
  return argv0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--parity-child") == 0) return childMain(argc, argv);

  std::string which = std::getenv("DEPTHGATE_PARITY_B") ? std::getenv("DEPTHGATE_PARITY_B") : "auto";
  std::string variantB = "scalar", jsonPath, only, benchPath;
  int threadsA = 0, threadsB = 1;
  uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  bool quick = false, mutants = false;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--b")
      which = arg(i, argc, argv);
    else if (a == "--threads-a")
      threadsA = std::atoi(arg(i, argc, argv).c_str());
    else if (a == "--threads-b")
      threadsB = std::atoi(arg(i, argc, argv).c_str());
    else if (a == "--variant-b")
      variantB = arg(i, argc, argv);
    else if (a == "--seed")
      seed = std::strtoull(arg(i, argc, argv).c_str(), nullptr, 10);
    else if (a == "--quick")
      quick = true;
    else if (a == "--only")
      only = arg(i, argc, argv);
    else if (a == "--json")
      jsonPath = arg(i, argc, argv);
    else if (a == "--mutants")
      mutants = true, quick = true;
    else if (a == "--bench")
      benchPath = arg(i, argc, argv);
    else {
      std::fprintf(stderr, "unknown argument %s (see the comment at the top of ops_parity_test.cc)\n", a.c_str());
      return 64;
    }
  }
  const bool requireGpu =
      std::getenv("DEPTHGATE_REQUIRE_GPU") && std::string(std::getenv("DEPTHGATE_REQUIRE_GPU")) == "1";
  if (requireGpu) which = "cuda";

  // Backend B.
  std::unique_ptr<dg::Ops> cuda;
  std::unique_ptr<ChildOps> child;
  std::string cudaProbe = "null", bLabel;
  if (which == "auto" || which == "cuda") {
    const dg::CudaProbe p = dg::probeCuda();
    cudaProbe = p.probeJson;
    try {
      cuda = dg::createCudaOps(0);
      bLabel = "cuda (" + p.libraryPath + ")";
    } catch (const std::exception& e) {
      if (which == "cuda") {
        std::printf("backend B: CUDA is required (%s) but unavailable: %s\nprobe: %s\n0 passed, 1 failed\n",
                    requireGpu ? "DEPTHGATE_REQUIRE_GPU=1" : "--b cuda", e.what(), p.probeJson.c_str());
        if (!jsonPath.empty())
          std::ofstream(jsonPath) << "{\"error\":\"CUDA unavailable\",\"reason\":" << dg::jsonQuote(e.what())
                                  << ",\"failed\":1,\"probe\":" << cudaProbe << "}\n";
        return 2;
      }
      std::printf("backend B: no usable CUDA backend (%s); using a second CPU backend\n", e.what());
    }
  }
  if (!cuda) {
    try {
      child = std::make_unique<ChildOps>(selfExe(argv[0]), variantB, threadsB);
      bLabel = "cpu " + child->variant() + " in a child process, " + std::to_string(threadsB) + " thread" +
               (threadsB == 1 ? "" : "s");
    } catch (const std::exception& e) {
      std::printf("backend B: cannot start the child CPU backend: %s\n0 passed, 1 failed\n", e.what());
      return 2;
    }
  }
  if (threadsA <= 0) threadsA = cuda ? int(std::min(16u, std::max(1u, std::thread::hardware_concurrency()))) : 2;
  std::unique_ptr<dg::Ops> cpuA(dg::createCpuOps(threadsA));
  const std::string aLabel =
      std::string("cpu ") + dg::cpuKernelVariant() + ", " + std::to_string(threadsA) + " threads";
  dg::Ops* opsB = cuda ? cuda.get() : static_cast<dg::Ops*>(child.get());

  if (!benchPath.empty()) return runOpBench(*opsB, bLabel, cudaProbe, benchPath, quick);

  Ctx c;
  c.side[0] = Side{cpuA.get(), aLabel, true};
  c.side[1] = Side{opsB, bLabel, !cuda};
  c.rng = Rng(seed);
  c.quick = quick;
  ChildOps* childRaw = child.get();
  if (childRaw)
    c.afterCase = [childRaw] {
      try {
        childRaw->forgetWeights();
      } catch (...) {
      }
    };
  std::printf("ops parity: A = %s, B = %s, seed %llu%s\n", aLabel.c_str(), bLabel.c_str(),
              static_cast<unsigned long long>(seed), quick ? ", quick" : "");
  std::fflush(stdout);

  auto selected = [&](const char* name) {
    if (only.empty()) return true;
    const std::string list = "," + only + ",";
    return list.find("," + std::string(name) + ",") != std::string::npos;
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::string timings;

  if (mutants) {
    int survived = 0;
    for (const Mutation& m : mutations()) {
      MutantOps mutant(opsB, m.name);
      c.side[1].ops = &mutant;
      const size_t mark = c.report.mark();
      const char* runner = runnerFor(m.groups);
      for (const Group& g : kGroups)
        if (std::string(g.name) == (runner ? runner : m.groups)) g.run(c);
      const int caught = c.report.failuresIn(m.groups);
      std::printf("mutant %-28s %s (%d failing checks)\n", m.name, caught ? "caught" : "NOT CAUGHT", caught);
      if (!caught) survived++;
      c.report.truncate(mark);
      c.side[1].ops = opsB;
      c.bDead = false;
      c.bConsecutiveErrors = 0;
    }
    size_t planted = mutations().size();
    if (childRaw) {
      // Host memory passed where backend memory belongs (a missing upload) must be refused.
      planted++;
      std::vector<float> host(64, 1.f);
      bool caught = false;
      try {
        DevBuf out(*childRaw, 256);
        childRaw->rmsnorm(out.as<float>(), host.data(), dg::RowSet::dense(1), 64, host.data(), 1e-5f);
      } catch (const dg::Error& e) {
        caught = e.code == "ERR_PARITY_BAD_POINTER";
      }
      std::printf("planted host pointer passed to an op      %s\n", caught ? "caught" : "NOT CAUGHT");
      survived += caught ? 0 : 1;
      // And the host reading backend memory must fault, as it would for a GPU's memory.
      planted++;
      DevBuf b(*childRaw, 64);
      fflush(stdout);
      const pid_t pid = fork();
      if (pid == 0) {
        volatile float v = *b.as<volatile float>();
        (void)v;
        _exit(0);
      }
      int status = 0;
      waitpid(pid, &status, 0);
      const bool faulted = WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV;
      std::printf("planted host read of backend memory       %s\n", faulted ? "caught (SIGSEGV)" : "NOT CAUGHT");
      survived += faulted ? 0 : 1;
    }
    std::printf("%d of %zu planted bugs caught\n", int(planted) - survived, planted);
    return survived ? 1 : 0;
  }

  for (const Group& g : kGroups) {
    if (!selected(g.name)) continue;
    const auto g0 = std::chrono::steady_clock::now();
    g.run(c);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count();
    std::printf("  %-10s %6.2f s\n", g.name, s);
    std::fflush(stdout);
    char b[96];
    std::snprintf(b, sizeof b, "%s\"%s\":%.3f", timings.empty() ? "" : ",", g.name, s);
    timings += b;
  }
  // Nothing may stay allocated once every case has released its buffers.
  const size_t leftA = dg::cpuBytesOutstanding();
  c.report.add(Check{"memory", "no CPU backend memory left allocated", 0, double(leftA), 0, leftA == 0,
                     std::to_string(leftA) + " bytes outstanding"});
  if (childRaw) {
    size_t leftB = 0;
    try {
      leftB = childRaw->liveAllocations();
    } catch (const std::exception& e) {
      leftB = size_t(-1);
    }
    c.report.add(Check{"memory", "no child backend memory left allocated", 1, double(leftB), 0, leftB == 0,
                       std::to_string(leftB) + " allocations live"});
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  c.report.printSummary(aLabel, bLabel);
  if (!jsonPath.empty()) {
    char extra[256];
    std::snprintf(extra, sizeof extra, "\"seed\":\"%llu\",\"quick\":%s,\"seconds\":%.2f,",
                  static_cast<unsigned long long>(seed), quick ? "true" : "false", seconds);
    std::ofstream(jsonPath) << c.report.json(
                                   aLabel, bLabel,
                                   std::string(extra) + "\"groupSeconds\":{" + timings + "},\"cudaProbe\":" + cudaProbe)
                            << "\n";
  }
  std::printf("%d passed, %d failed (%.1f s)\n", c.report.passes(), c.report.failures(), seconds);
  return c.report.failures() ? 1 : 0;
}
