// Per-op timings of one backend at the shapes of Llama-3.2-1B and Llama-3-8B decode (and a few
// prefill sizes), written as JSON: bytes and flops each call must move or do, and the time per
// call. scripts/gpu/bench_ceilings.py sets them against the copy bandwidth and matrix rate
// measured in the same GPU call. `quick` uses small shapes (the CPU dry run).
#pragma once
#include <string>

#include "backend.h"

namespace parity {

int runOpBench(dg::Ops& ops, const std::string& label, const std::string& probeJson, const std::string& path,
               bool quick = false);

}  // namespace parity
